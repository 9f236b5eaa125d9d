//! Images: MNIST's IDX files (gzipped or not) or a folder per class (`root/<class>/*.png`,
//! the ImageFolder convention) read into one byte per value, what a site reports of them
//! (per channel, over at least k images) and their encoding under the plan.
//!
//! The plan normalises each channel with the federation's mean and deviation of its values
//! scaled to [0, 1], from aggregates as for a table's numeric column: a site reports, per
//! channel, its number of images, the sum of their mean values and the sum of their mean
//! squared values, which pool to the federation's moments of single values. No value, and
//! no single image, leaves a site.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::dataset::Dataset;
use super::plan::{ColumnKind, Plan};
use super::stats::{ColumnStats, SiteStats};
use crate::error::DataError;
use crate::task::ImageSpec;

/// Largest IDX file accepted, decompressed (MNIST's training images are 47 MB).
pub const MAX_IDX_BYTES: u64 = 1 << 30;

/// Labelled images of one size: `pixels` holds `len() × spec.values()` bytes, image after
/// image, each channel after channel (CHW), rows top to bottom.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    /// Where the images came from (named in every error).
    pub source: PathBuf,
    pub spec: ImageSpec,
    pub pixels: Vec<u8>,
    /// The class of each image (an index into the task's classes).
    pub labels: Vec<u32>,
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The bytes of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.spec.values();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// The images at `indices`, in that order.
    pub fn subset(&self, indices: &[usize], source: PathBuf) -> ImageSet {
        let mut pixels = Vec::with_capacity(indices.len() * self.spec.values());
        for &i in indices {
            pixels.extend_from_slice(self.image(i));
        }
        ImageSet { source, spec: self.spec, pixels, labels: indices.iter().map(|&i| self.labels[i]).collect() }
    }

    /// Reads a site's images from `path`: an IDX images file (its labels beside it, the name
    /// with `labels` for `images` and `idx1` for `idx3`, as MNIST's), a folder holding one such
    /// pair, or a folder per class (see [`ImageSet::read_folder`]).
    pub fn read(path: &Path, spec: ImageSpec, classes: &[String]) -> Result<ImageSet, DataError> {
        match locate(path)? {
            Located::Idx(images) => Self::read_idx(&images, &idx_labels_beside(&images)?, spec, classes),
            Located::Folder(root) => Self::read_folder(&root, spec, classes),
        }
    }

    /// Reads an IDX pair (MNIST's `*-images-idx3-ubyte[.gz]` and `*-labels-idx1-ubyte[.gz]`):
    /// images of the task's size, labels mapped to the task's classes by their decimal value.
    pub fn read_idx(images: &Path, labels: &Path, spec: ImageSpec, classes: &[String]) -> Result<ImageSet, DataError> {
        let (image_dims, pixels) = read_idx_file(images)?;
        let (label_dims, values) = read_idx_file(labels)?;
        let file_error = |file: &Path, message: String| DataError::File { file: file.to_owned(), message };
        let (n, height, width) = match image_dims[..] {
            [n, h, w] => (n, h, w),
            [n, h, w, c] if c == spec.channels => (n, h, w),
            _ => return Err(file_error(images, format!("holds a {}-dimensional array; images are [count, height, width]", image_dims.len()))),
        };
        if height != spec.height || width != spec.width || (image_dims.len() == 3 && spec.channels != 1) {
            return Err(file_error(
                images,
                format!(
                    "holds {height}×{width} images with {} channel(s); the task's are {}×{} with {}",
                    image_dims.get(3).copied().unwrap_or(1),
                    spec.height,
                    spec.width,
                    spec.channels
                ),
            ));
        }
        if label_dims[..] != [n] {
            return Err(file_error(labels, format!("holds labels of shape {label_dims:?}; the images file {} holds {n} images", images.display())));
        }
        let pixels = if image_dims.len() == 4 { transpose_channels(&pixels, n, spec, true) } else { pixels };
        let labels = values
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let name = v.to_string();
                classes
                    .iter()
                    .position(|c| *c == name)
                    .map(|c| c as u32)
                    .ok_or_else(|| file_error(labels, format!("item {i} has label {v}, which is not one of the task's classes {}", classes.join(", "))))
            })
            .collect::<Result<Vec<u32>, _>>()?;
        Ok(ImageSet { source: images.to_owned(), spec, pixels, labels })
    }

    /// Reads a folder per class, `root/<class>/*.png`, each folder named as one of the task's
    /// classes (a class may have none). Images are read in name order; each must have the
    /// task's size (nothing is resized behind the user's back); colour images are read as
    /// grey for a one-channel task and grey ones as RGB for a three-channel task. Hidden files
    /// are skipped; any other file or folder is an error naming it.
    pub fn read_folder(root: &Path, spec: ImageSpec, classes: &[String]) -> Result<ImageSet, DataError> {
        let file_error = |file: &Path, message: String| DataError::File { file: file.to_owned(), message };
        let mut set = ImageSet { source: root.to_owned(), spec, pixels: Vec::new(), labels: Vec::new() };
        for class_dir in visible_entries(root)? {
            let name = class_dir.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
            if !class_dir.is_dir() {
                return Err(file_error(&class_dir, "is a file where the image folder holds one folder per class".into()));
            }
            let Some(class) = classes.iter().position(|c| *c == name) else {
                return Err(file_error(&class_dir, format!("is not one of the task's classes ({})", classes.join(", "))));
            };
            for file in visible_entries(&class_dir)? {
                set.pixels.extend(read_png(&file, spec)?);
                set.labels.push(class as u32);
            }
        }
        if set.is_empty() {
            return Err(file_error(root, format!("holds no images: expected a folder per class ({}) with PNG files", classes.join(", "))));
        }
        Ok(set)
    }

    /// Writes the images as a gzipped IDX pair (MNIST's format), labels as the decimal
    /// values their classes name.
    pub fn write_idx(&self, images: &Path, labels: &Path, classes: &[String]) -> Result<(), DataError> {
        use std::io::Write;
        let values = self
            .labels
            .iter()
            .map(|&l| classes.get(l as usize).and_then(|c| c.parse::<u8>().ok()))
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| DataError::File { file: labels.to_owned(), message: "IDX labels are bytes: the classes must be named 0 to 255".into() })?;
        let spec = self.spec;
        let (image_dims, pixels): (Vec<usize>, Vec<u8>) = if spec.channels == 1 {
            (vec![self.len(), spec.height, spec.width], self.pixels.clone())
        } else {
            (vec![self.len(), spec.height, spec.width, spec.channels], transpose_channels(&self.pixels, self.len(), spec, false))
        };
        for (path, dims, data) in [(images, image_dims, pixels), (labels, vec![self.len()], values)] {
            let io = |source| DataError::Io { path: path.to_owned(), source };
            let mut out = flate2::write::GzEncoder::new(std::fs::File::create(path).map_err(io)?, flate2::Compression::default());
            out.write_all(&[0, 0, 0x08, dims.len() as u8]).map_err(io)?;
            for d in dims {
                out.write_all(&(d as u32).to_be_bytes()).map_err(io)?;
            }
            out.write_all(&data).map_err(io)?;
            out.finish().map_err(io)?;
        }
        Ok(())
    }

    /// What a site reports of the images at `indices` (its training split): per channel the
    /// number of images, the sum of their mean values and the sum of their mean squared
    /// values (values scaled to [0, 1]), nothing when fewer than `k` images; label counts
    /// under the same k as a table's.
    pub fn summarise(&self, indices: &[usize], num_classes: usize, k: u64) -> SiteStats {
        let spec = self.spec;
        let plane = spec.height * spec.width;
        let columns = channel_names(spec.channels)
            .into_iter()
            .enumerate()
            .map(|(c, name)| {
                let mut s = ColumnStats { name, ..Default::default() };
                for &i in indices {
                    let values = &self.image(i)[c * plane..(c + 1) * plane];
                    let (sum, sum_sq) = values.iter().fold((0.0f64, 0.0f64), |(a, b), &v| {
                        let x = f64::from(v) / 255.0;
                        (a + x, b + x * x)
                    });
                    s.numeric_count += 1;
                    s.sum += sum / plane as f64;
                    s.sum_squares += sum_sq / plane as f64;
                }
                if s.numeric_count < k {
                    s = ColumnStats { name: s.name, missing: s.numeric_count, ..Default::default() };
                }
                s
            })
            .collect();
        let mut counts = vec![0u64; num_classes];
        for &i in indices {
            if let Some(n) = counts.get_mut(self.labels[i] as usize) {
                *n += 1;
            }
        }
        let label_present = counts.iter().map(|&n| n > 0).collect();
        let label_counts = if counts.iter().all(|&n| n == 0 || n >= k) { counts } else { Vec::new() };
        SiteStats { columns, label_counts, label_present, label_values: None }
    }

    /// The images at `indices` as examples: each value scaled to [0, 1], then standardised
    /// with its channel's mean and deviation from the plan.
    pub fn encode(&self, plan: &Plan, indices: &[usize], num_classes: usize) -> Result<Dataset, DataError> {
        let spec = self.spec;
        let plane = spec.height * spec.width;
        let moments = channel_moments(plan, spec.channels)?;
        let mut features = Vec::with_capacity(indices.len() * spec.values());
        for &i in indices {
            for (c, values) in self.image(i).chunks(plane).enumerate() {
                let (mean, std) = moments[c];
                features.extend(values.iter().map(|&v| (f32::from(v) / 255.0 - mean) / std));
            }
        }
        let labels: Vec<u32> = indices.iter().map(|&i| self.labels[i]).collect();
        Ok(Dataset { features, n_features: spec.values(), labels, num_classes, ..Default::default() })
    }
}

/// How many images `path` holds (as [`ImageSet::read`] would read them), without decoding
/// them: an IDX labels file's declared count, or the files of a folder per class.
pub fn count_images(path: &Path) -> Result<usize, DataError> {
    match locate(path)? {
        Located::Idx(images) => Ok(read_idx_file(&idx_labels_beside(&images)?)?.0.first().copied().unwrap_or(0)),
        Located::Folder(root) => {
            let mut n = 0;
            for dir in visible_entries(&root)?.iter().filter(|p| p.is_dir()) {
                n += visible_entries(dir)?.len();
            }
            Ok(n)
        }
    }
}

/// Where a site's images are.
enum Located {
    /// An IDX images file (its labels beside it).
    Idx(PathBuf),
    /// A folder per class.
    Folder(PathBuf),
}

/// An IDX images file, a folder holding exactly one, or else a folder per class.
fn locate(path: &Path) -> Result<Located, DataError> {
    if path.is_file() {
        return Ok(Located::Idx(path.to_owned()));
    }
    let idx: Vec<PathBuf> =
        visible_entries(path)?.into_iter().filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains("images-idx3"))).collect();
    match &idx[..] {
        [] => Ok(Located::Folder(path.to_owned())),
        [one] => Ok(Located::Idx(one.clone())),
        several => Err(DataError::File { file: path.to_owned(), message: format!("holds {} IDX image files; name one of them with --data", several.len()) }),
    }
}

/// A folder's entries in name order, hidden ones (`.DS_Store`) left out.
fn visible_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let entries = std::fs::read_dir(dir).map_err(|source| DataError::Io { path: dir.to_owned(), source })?;
    let mut paths: Vec<PathBuf> =
        entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))).collect();
    paths.sort();
    Ok(paths)
}

/// The labels file of an IDX images file: `train-images-idx3-ubyte.gz` →
/// `train-labels-idx1-ubyte.gz`.
fn idx_labels_beside(images: &Path) -> Result<PathBuf, DataError> {
    let name = images.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let labels = name.replace("images", "labels").replace("idx3", "idx1");
    let path = images.with_file_name(&labels);
    if labels == name || !path.is_file() {
        return Err(DataError::File { file: images.to_owned(), message: format!("has no labels file beside it (looked for {})", path.display()) });
    }
    Ok(path)
}

/// Each channel's mean and deviation in the plan (values scaled to [0, 1]).
pub fn channel_moments(plan: &Plan, channels: usize) -> Result<Vec<(f32, f32)>, DataError> {
    channel_names(channels)
        .iter()
        .map(|name| match plan.columns.iter().find(|c| c.name == *name).map(|c| &c.kind) {
            Some(ColumnKind::Numeric { mean, std }) => Ok(((*mean) as f32, if *std > 0.0 { (*std) as f32 } else { 1.0 })),
            _ => Err(DataError::Spec(format!("the plan has no numeric `{name}` channel for these images"))),
        })
        .collect()
}

/// Appends `aug.image_copies` transformed copies of every encoded image of `data`: each
/// shifted by up to `crop_padding` pixels each way (a random crop of the padded image),
/// mirrored left to right half the time with `flip`, and rotated within ±`rotation_degrees`
/// about its centre, sampled at the nearest pixel. Uncovered pixels are black (`black`: each
/// channel's standardised 0). Seeded by `rng`; the originals come first, unchanged.
pub fn augment_images(data: &Dataset, spec: ImageSpec, aug: &crate::task::Augmentation, black: &[f32], rng: &mut rand_chacha::ChaCha8Rng) -> Dataset {
    use rand::Rng;
    let mut out = data.clone();
    let (h, w, plane) = (spec.height as i64, spec.width as i64, spec.height * spec.width);
    let pad = aug.crop_padding as i64;
    let (cy, cx) = ((h - 1) as f64 / 2.0, (w - 1) as f64 / 2.0);
    for _ in 0..aug.image_copies {
        for i in 0..data.len() {
            let (dy, dx) = (rng.random_range(-pad..=pad), rng.random_range(-pad..=pad));
            let mirror = aug.flip && rng.random_bool(0.5);
            let angle = if aug.rotation_degrees > 0.0 { rng.random_range(-aug.rotation_degrees..=aug.rotation_degrees).to_radians() } else { 0.0 };
            let (sin, cos) = angle.sin_cos();
            let source = data.row(i);
            let mut row = Vec::with_capacity(source.len());
            for (c, &fill) in black.iter().enumerate().take(spec.channels) {
                for y in 0..h {
                    for x in 0..w {
                        // Where this output pixel comes from: undo the shift, then the rotation
                        // about the centre, then the mirror.
                        let (u, v) = ((x - dx) as f64 - cx, (y - dy) as f64 - cy);
                        let (sx, sy) = (cos * u + sin * v + cx, -sin * u + cos * v + cy);
                        let (sx, sy) = (sx.round() as i64, sy.round() as i64);
                        let sx = if mirror { w - 1 - sx } else { sx };
                        row.push(if (0..w).contains(&sx) && (0..h).contains(&sy) { source[c * plane + (sy * w + sx) as usize] } else { fill });
                    }
                }
            }
            out.push_copy(data, i, &row);
        }
    }
    out
}

/// The names a site's channel aggregates carry: `pixels` for grey images, `red`, `green` and
/// `blue` for colour ones.
pub fn channel_names(channels: usize) -> Vec<String> {
    match channels {
        1 => vec!["pixels".to_owned()],
        _ => ["red", "green", "blue"].iter().take(channels).map(|s| (*s).to_owned()).collect(),
    }
}

/// Checks that a site's aggregates are those of images of `spec`: exactly the channel
/// columns, numeric, each image's mean and mean square within [0, 1] (so their sums are at
/// most the count). An honest site always passes; the message names what is wrong.
pub fn validate_image_stats(stats: &SiteStats, spec: &ImageSpec) -> Result<(), String> {
    let names = channel_names(spec.channels);
    let reported: Vec<&str> = stats.columns.iter().map(|c| c.name.as_str()).collect();
    if reported != names.iter().map(String::as_str).collect::<Vec<_>>() {
        return Err(format!("an image task's aggregates are the channels {names:?}; the site reported columns {reported:?}"));
    }
    for c in &stats.columns {
        let n = c.numeric_count as f64;
        if c.categorical || !c.categories.is_empty() || !c.histogram.is_empty() {
            return Err(format!("channel `{}`: reported with categories or a histogram", c.name));
        }
        if !(0.0..=n).contains(&c.sum) || !(0.0..=n).contains(&c.sum_squares) {
            return Err(format!("channel `{}`: values scaled to [0, 1] cannot sum to {} and {} over {} images", c.name, c.sum, c.sum_squares, c.numeric_count));
        }
    }
    Ok(())
}

/// Reads one IDX file (gzipped when it starts with gzip's magic bytes): its dimensions and
/// its unsigned bytes. Refuses another element type, a size beyond [`MAX_IDX_BYTES`], and a
/// file whose data is shorter or longer than its header declares.
pub fn read_idx_file(path: &Path) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let file = std::fs::File::open(path).map_err(|source| DataError::Io { path: path.to_owned(), source })?;
    let mut reader = std::io::BufReader::new(file);
    let gzipped = {
        use std::io::BufRead;
        reader.fill_buf().map_err(|source| DataError::Io { path: path.to_owned(), source })?.starts_with(&[0x1f, 0x8b])
    };
    if gzipped { parse_idx(flate2::read::GzDecoder::new(reader), path) } else { parse_idx(reader, path) }
}

/// Parses IDX from any reader; `path` names it in errors.
pub fn parse_idx<R: Read>(reader: R, path: &Path) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let err = |message: String| DataError::File { file: path.to_owned(), message };
    // Never more than the limit (plus one byte, to tell "too long") is decompressed.
    let mut reader = reader.take(MAX_IDX_BYTES + 1);
    let io = |e: std::io::Error| err(format!("cannot read IDX data: {e}"));
    let mut magic = [0u8; 4];
    reader.read_exact(&mut magic).map_err(|_| err("shorter than an IDX header (4 bytes)".into()))?;
    if magic[..2] != [0, 0] {
        return Err(err(format!("is not an IDX file: it starts with {:02x} {:02x}, not 00 00", magic[0], magic[1])));
    }
    if magic[2] != 0x08 {
        return Err(err(format!("holds IDX elements of type 0x{:02x}; only unsigned bytes (0x08) are read", magic[2])));
    }
    let ndim = usize::from(magic[3]);
    if !(1..=4).contains(&ndim) {
        return Err(err(format!("declares {ndim} dimensions; 1 to 4 are read")));
    }
    let mut dims = Vec::with_capacity(ndim);
    for d in 0..ndim {
        let mut b = [0u8; 4];
        reader.read_exact(&mut b).map_err(|_| err(format!("ends inside its header, at dimension {}", d + 1)))?;
        dims.push(u32::from_be_bytes(b) as usize);
    }
    let total = dims
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
        .filter(|&t| t <= MAX_IDX_BYTES)
        .ok_or_else(|| err(format!("declares dimensions {dims:?}, more than the {MAX_IDX_BYTES} bytes an IDX file may hold here")))?;
    let mut data = Vec::with_capacity(total as usize);
    reader.read_to_end(&mut data).map_err(io)?;
    if data.len() as u64 != total {
        let what = if (data.len() as u64) < total { "is truncated" } else { "is longer than its header says" };
        return Err(err(format!("{what}: dimensions {dims:?} need {total} bytes of data, the file has {}", data.len())));
    }
    Ok((dims, data))
}

/// One PNG file of the task's size as CHW bytes.
fn read_png(file: &Path, spec: ImageSpec) -> Result<Vec<u8>, DataError> {
    let err = |message: String| DataError::File { file: file.to_owned(), message };
    if !file.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("png")) {
        return Err(err("is not a PNG file; an image folder holds PNG images only".into()));
    }
    let mut reader = image::ImageReader::open(file).map_err(|source| DataError::Io { path: file.to_owned(), source })?;
    // A hostile or broken header cannot make the site allocate beyond the largest image a
    // task may ask for; an image of another size than the task's is refused below, by name.
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(crate::task::MAX_IMAGE_SIDE as u32);
    limits.max_image_height = Some(crate::task::MAX_IMAGE_SIDE as u32);
    reader.limits(limits);
    let image = reader
        .with_guessed_format()
        .map_err(|e| err(format!("cannot read: {e}")))?
        .decode()
        .map_err(|e| err(format!("cannot decode as a {}×{} image: {e}", spec.width, spec.height)))?;
    if (image.width() as usize, image.height() as usize) != (spec.width, spec.height) {
        return Err(err(format!("is {}×{}; the task's images are {}×{}", image.width(), image.height(), spec.width, spec.height)));
    }
    Ok(match spec.channels {
        1 => image.to_luma8().into_raw(),
        _ => {
            let hwc = image.to_rgb8().into_raw();
            transpose_channels(&hwc, 1, spec, true)
        }
    })
}

/// Colour images stored height × width × channel (as IDX and most formats do) to CHW
/// (`to_chw`), or back.
fn transpose_channels(pixels: &[u8], n: usize, spec: ImageSpec, to_chw: bool) -> Vec<u8> {
    let (c, plane) = (spec.channels, spec.height * spec.width);
    let mut out = vec![0u8; pixels.len()];
    for i in 0..n {
        let (src, dst) = (&pixels[i * c * plane..(i + 1) * c * plane], &mut out[i * c * plane..(i + 1) * c * plane]);
        for p in 0..plane {
            for ch in 0..c {
                let (hwc, chw) = (p * c + ch, ch * plane + p);
                if to_chw {
                    dst[chw] = src[hwc];
                } else {
                    dst[hwc] = src[chw];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, 0x08, dims.len() as u8];
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn classes() -> Vec<String> {
        (0..10).map(|d| d.to_string()).collect()
    }

    const GREY_2X2: ImageSpec = ImageSpec { channels: 1, height: 2, width: 2 };

    fn write_pair(dir: &Path, images: &[u8], labels: &[u8]) -> (PathBuf, PathBuf) {
        let (i, l) = (dir.join("images.idx3-ubyte.gz"), dir.join("labels.idx1-ubyte"));
        std::fs::write(&i, images).unwrap();
        std::fs::write(&l, labels).unwrap();
        (i, l)
    }

    #[test]
    fn an_idx_pair_reads_gzipped_or_not_with_labels_as_classes() {
        let dir = tempfile::tempdir().unwrap();
        let pixels: Vec<u8> = (0..12).map(|v| v * 20).collect();
        let (i, l) = write_pair(dir.path(), &gz(&idx(&[3, 2, 2], &pixels)), &idx(&[3], &[7, 0, 9]));
        let set = ImageSet::read_idx(&i, &l, GREY_2X2, &classes()).unwrap();
        assert_eq!((set.len(), set.labels.clone(), set.image(1)), (3, vec![7, 0, 9], &pixels[4..8]));
        // Classes are matched by name, not by position.
        let names: Vec<String> = ["9", "7", "0"].iter().map(|s| s.to_string()).collect();
        assert_eq!(ImageSet::read_idx(&i, &l, GREY_2X2, &names).unwrap().labels, vec![1, 2, 0]);
    }

    #[test]
    fn damaged_and_mismatched_idx_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let pixels = [1u8; 12];
        let cases: [(Vec<u8>, Vec<u8>, &str); 8] = [
            (idx(&[3, 2, 2], &pixels[..11]), idx(&[3], &[1, 2, 3]), "is truncated: dimensions [3, 2, 2] need 12 bytes of data, the file has 11"),
            (idx(&[3, 2, 2], &[1u8; 13]), idx(&[3], &[1, 2, 3]), "longer than its header says"),
            (gz(&idx(&[3, 2, 2], &pixels))[..20].to_vec(), idx(&[3], &[1, 2, 3]), "images.idx3-ubyte.gz"),
            (idx(&[3, 3, 3], &[1u8; 27]), idx(&[3], &[1, 2, 3]), "holds 3×3 images with 1 channel(s); the task's are 2×2 with 1"),
            (idx(&[3, 2, 2], &pixels), idx(&[2], &[1, 2]), "holds labels of shape [2]; the images file"),
            (idx(&[3, 2, 2], &pixels), idx(&[3], &[1, 12, 3]), "item 1 has label 12, which is not one of the task's classes"),
            (vec![0x50, 0x4b, 3, 4, 0, 0], idx(&[3], &[1, 2, 3]), "is not an IDX file"),
            (idx(&[u32::MAX, u32::MAX, 2], &[]), idx(&[3], &[1, 2, 3]), "more than the"),
        ];
        for (images, labels, expected) in cases {
            let (i, l) = write_pair(dir.path(), &images, &labels);
            let err = ImageSet::read_idx(&i, &l, GREY_2X2, &classes()).unwrap_err().to_string();
            assert!(err.contains(expected), "expected `{expected}` in: {err}");
        }
        let mut float = idx(&[1], &[0, 0, 0, 0]);
        float[2] = 0x0d;
        let err = parse_idx(&float[..], Path::new("f.idx")).unwrap_err().to_string();
        assert!(err.contains("f.idx") && err.contains("type 0x0d"), "{err}");
    }

    #[test]
    fn channel_aggregates_pool_to_the_moments_of_single_values_and_respect_k() {
        // Two images: values {0, 255, 255, 0} and {255, 255, 255, 255}, scaled: mean 3/4,
        // mean square 3/4, so the pooled deviation is √(3/4 − 9/16) = √3/4.
        let set = ImageSet { source: "x".into(), spec: GREY_2X2, pixels: vec![0, 255, 255, 0, 255, 255, 255, 255], labels: vec![0, 1] };
        let stats = set.summarise(&[0, 1], 2, 1);
        assert_eq!(validate_image_stats(&stats, &GREY_2X2), Ok(()));
        assert_eq!(stats.validate(2, &Default::default()), Ok(()), "they pass the table checks too");
        let plan = Plan::combine(&[&stats]);
        let ColumnKind::Numeric { mean, std } = plan.columns[0].kind else { panic!("{plan:?}") };
        assert!((mean - 0.75).abs() < 1e-12 && (std - 3f64.sqrt() / 4.0).abs() < 1e-12, "{mean} {std}");
        let encoded = set.encode(&plan, &[1, 0], 2).unwrap();
        assert_eq!((encoded.n_features, encoded.labels.clone()), (4, vec![1, 0]));
        let one = ((1.0 - 0.75) / (3f64.sqrt() / 4.0)) as f32;
        assert!((encoded.features[0] - one).abs() < 1e-6, "{:?}", encoded.features);
        // Under k = 3 two images say nothing: no moments, no label counts.
        let hidden = set.summarise(&[0, 1], 2, 3);
        assert_eq!((hidden.columns[0].numeric_count, hidden.columns[0].missing, hidden.label_counts.len()), (0, 2, 0));
    }

    #[test]
    fn augmented_copies_are_shifted_mirrored_and_rotated_images_of_the_originals() {
        use rand::SeedableRng;
        let spec = ImageSpec { channels: 1, height: 5, width: 5 };
        // One image, black (-1 standardised) but for a bright pixel at row 2, column 3.
        let mut image = vec![-1.0f32; 25];
        image[2 * 5 + 3] = 1.0;
        let data = Dataset { features: image.clone(), n_features: 25, labels: vec![4], num_classes: 10, ..Default::default() };
        let bright = |row: &[f32]| row.iter().enumerate().filter(|(_, v)| **v > 0.0).map(|(p, _)| (p / 5, p % 5)).collect::<Vec<_>>();
        let aug = |copies, crop_padding, flip, rotation_degrees| crate::task::Augmentation {
            image_copies: copies,
            crop_padding,
            flip,
            rotation_degrees,
            ..Default::default()
        };
        let run = |a: &crate::task::Augmentation, seed| augment_images(&data, spec, a, &[-1.0], &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        let shifted = run(&aug(8, 1, false, 0.0), 1);
        assert_eq!((shifted.len(), shifted.row(0), shifted.labels.clone()), (9, &image[..], vec![4; 9]), "the original first, labels kept");
        let mut moves = std::collections::BTreeSet::new();
        for k in 1..9 {
            let [(y, x)] = bright(shifted.row(k))[..] else { panic!("one bright pixel in copy {k}: {:?}", shifted.row(k)) };
            assert!(y.abs_diff(2) <= 1 && x.abs_diff(3) <= 1, "a shift of at most the padding: ({y}, {x})");
            moves.insert((y, x));
        }
        assert!(moves.len() > 2, "the shifts vary: {moves:?}");
        assert_eq!(shifted.features, run(&aug(8, 1, false, 0.0), 1).features, "seeded");
        let mirrored = run(&aug(8, 0, true, 0.0), 2);
        let sides: std::collections::BTreeSet<_> = (1..9).map(|k| bright(mirrored.row(k))).collect();
        assert_eq!(sides, [vec![(2, 1)], vec![(2, 3)]].into_iter().collect(), "mirrored about the middle column, or not");
        // A turn of at most 45° about the centre moves a pixel one off the centre to a
        // neighbour of where it was (nearest-pixel sampling may draw it twice or not at all).
        let rotated = run(&aug(8, 0, false, 45.0), 3);
        let mut turned = false;
        for k in 1..9 {
            let lit = bright(rotated.row(k));
            assert!(lit.len() <= 2 && lit.iter().all(|&(y, x)| y.abs_diff(2) <= 1 && x.abs_diff(3) <= 1 && (y, x) != (2, 2)), "{lit:?}");
            turned |= lit.iter().any(|&p| p != (2, 3));
        }
        assert!(turned, "some copy is turned");
    }

    #[test]
    fn hostile_image_aggregates_are_refused() {
        let good = ImageSet { source: "x".into(), spec: GREY_2X2, pixels: vec![9; 8], labels: vec![0, 1] }.summarise(&[0, 1], 2, 1);
        let mut extra = good.clone();
        extra.columns.push(ColumnStats { name: "age".into(), ..Default::default() });
        assert!(validate_image_stats(&extra, &GREY_2X2).unwrap_err().contains("\"age\""));
        let mut bright = good.clone();
        bright.columns[0].sum = 3.0;
        assert!(validate_image_stats(&bright, &GREY_2X2).unwrap_err().contains("cannot sum to 3"));
        let colour = ImageSpec { channels: 3, ..GREY_2X2 };
        assert!(validate_image_stats(&good, &colour).unwrap_err().contains("red"));
    }

    #[test]
    fn an_image_folder_reads_classes_by_folder_name_and_refuses_what_does_not_fit() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let save = |class: &str, name: &str, w: u32, v: u8| {
            std::fs::create_dir_all(root.join(class)).unwrap();
            image::GrayImage::from_pixel(w, 2, image::Luma([v])).save(root.join(class).join(name)).unwrap();
        };
        save("7", "b.png", 2, 70);
        save("7", "a.png", 2, 71);
        save("3", "x.png", 2, 30);
        std::fs::write(root.join("7").join(".DS_Store"), b"junk").unwrap();
        let set = ImageSet::read_folder(root, GREY_2X2, &classes()).unwrap();
        assert_eq!((set.labels.clone(), set.image(0), set.image(1)), (vec![3, 7, 7], &[30u8; 4][..], &[71u8; 4][..]), "folders and files in name order");
        let rgb = ImageSet::read_folder(root, ImageSpec { channels: 3, ..GREY_2X2 }, &classes()).unwrap();
        assert_eq!(rgb.image(0), &[30u8; 12][..], "grey read as RGB");
        save("7", "wide.png", 3, 1);
        let err = ImageSet::read_folder(root, GREY_2X2, &classes()).unwrap_err().to_string();
        assert!(err.contains("wide.png") && err.contains("the task's images are 2×2"), "{err}");
        std::fs::remove_file(root.join("7").join("wide.png")).unwrap();
        std::fs::write(root.join("7").join("c.png"), b"not a png").unwrap();
        let err = ImageSet::read_folder(root, GREY_2X2, &classes()).unwrap_err().to_string();
        assert!(err.contains("c.png") && err.contains("cannot"), "{err}");
        std::fs::remove_file(root.join("7").join("c.png")).unwrap();
        save("cat", "a.png", 2, 1);
        let err = ImageSet::read_folder(root, GREY_2X2, &classes()).unwrap_err().to_string();
        assert!(err.contains("cat") && err.contains("not one of the task's classes"), "{err}");
    }

    #[test]
    fn colour_idx_images_are_stored_channel_first() {
        let spec = ImageSpec { channels: 3, height: 1, width: 2 };
        // One image, pixels (r, g, b) = (1, 2, 3) and (4, 5, 6).
        let dir = tempfile::tempdir().unwrap();
        let (i, l) = write_pair(dir.path(), &idx(&[1, 1, 2, 3], &[1, 2, 3, 4, 5, 6]), &idx(&[1], &[0]));
        let set = ImageSet::read_idx(&i, &l, spec, &classes()).unwrap();
        assert_eq!(set.pixels, vec![1, 4, 2, 5, 3, 6]);
        // Written back and read through `read` (the labels found beside the images).
        let (i2, l2) = (dir.path().join("s-images-idx3-ubyte.gz"), dir.path().join("s-labels-idx1-ubyte.gz"));
        set.write_idx(&i2, &l2, &classes()).unwrap();
        assert_eq!(ImageSet::read(&i2, spec, &classes()).unwrap().pixels, set.pixels);
    }
}

//! Which burn device runs training: burn-ndarray on the CPU, the project's required default.

use burn::prelude::Device;

/// The inference device (no autodiff).
#[allow(deprecated)] // burn 0.22 marks burn-ndarray deprecated in favour of flex; it is our required default
pub fn inference() -> Device {
    Device::ndarray()
}

/// The training device (autodiff over the inference device).
pub fn training() -> Device {
    inference().autodiff()
}

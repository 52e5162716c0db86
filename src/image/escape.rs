//! Image-supplied text on the operator's terminal: the helper now lives in `ark_os::escape`
//! (pod networking escapes CNI plugin replies with it too).
pub use ark_os::escape::controls_escaped;

//! Adaptive zstd level controller (placeholder bounds; controller below).

/// Highest zstd level the codec uses.
pub const MAX_LEVEL: i32 = 19;

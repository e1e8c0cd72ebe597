//! The guest's disk workload on the virtio-block driver: each iteration
//! writes `disk_blocks_per_iteration` one-sector blocks whose contents are
//! derived from (seed, iteration, block number)
//! ([`abi::virtio::disk_block_fill`]), then reads them back and verifies
//! them, folding what it read into a digest, and reports
//! `REPORT_DISK_ITERATION [iteration, digest, blocks_verified_total, errors]`.
//! One block is written or verified per step, so the main loop can
//! interleave it with other work. The digest depends only on the boot
//! parameters, so a migrated run must report what an unmigrated one does.

use wanmig_guest_abi::virtio::{disk_block_fill, disk_iteration_block, DISK_BLOCK_WORDS};
use wanmig_guest_abi::{self as abi, digest_step};

use super::arena;
use super::blk::BlkDriver;
use super::error::VirtioError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Write,
    Verify,
    Done,
}

/// Progress of the disk workload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskProgress {
    /// Completed iterations.
    pub iterations: u64,
    /// Digest over every verified word so far.
    pub digest: u64,
    /// Blocks read back and verified.
    pub verified: u64,
    /// Blocks that read back wrong, or requests that failed.
    pub errors: u64,
}

/// The disk workload.
pub struct DiskWorkload {
    blk: BlkDriver,
    seed: u64,
    total_blocks: u64,
    per_iteration: u64,
    iterations: u64,
    k: u64,
    phase: Phase,
    buf: &'static mut [u8],
    expect: [u64; DISK_BLOCK_WORDS],
    progress: DiskProgress,
}

const BLOCK_BYTES: usize = DISK_BLOCK_WORDS * 8;

impl DiskWorkload {
    /// Set up the block device and the workload from `params`
    /// (`disk_sectors` is clamped to the device's capacity).
    pub fn new(params: &abi::BootParams) -> Result<Self, VirtioError> {
        let blk = BlkDriver::new()?;
        let total_blocks = params.disk_sectors.min(blk.capacity_sectors());
        if total_blocks == 0 || params.disk_blocks_per_iteration == 0 {
            return Err(VirtioError::BadRequest);
        }
        Ok(DiskWorkload {
            blk,
            seed: params.disk_seed,
            total_blocks,
            per_iteration: params.disk_blocks_per_iteration.min(total_blocks),
            iterations: params.disk_iterations,
            k: 0,
            phase: Phase::Write,
            buf: arena::bytes(BLOCK_BYTES, 512).ok_or(VirtioError::OutOfMemory)?,
            expect: [0; DISK_BLOCK_WORDS],
            progress: DiskProgress::default(),
        })
    }

    /// Progress so far.
    pub fn progress(&self) -> DiskProgress {
        self.progress
    }

    /// Write or verify one block. Returns false once the workload is done.
    pub fn step(&mut self, _now_ms: u64) -> bool {
        let iteration = self.progress.iterations;
        let block = disk_iteration_block(iteration, self.k, self.per_iteration, self.total_blocks);
        match self.phase {
            Phase::Done => return false,
            Phase::Write => {
                disk_block_fill(self.seed, iteration, block, &mut self.expect);
                for (chunk, w) in self.buf.chunks_exact_mut(8).zip(self.expect.iter()) {
                    chunk.copy_from_slice(&w.to_le_bytes());
                }
                if self.blk.write(block, self.buf).is_err() {
                    self.progress.errors += 1;
                }
            }
            Phase::Verify => {
                disk_block_fill(self.seed, iteration, block, &mut self.expect);
                let mut ok = self.blk.read(block, self.buf).is_ok();
                for (chunk, w) in self.buf.chunks_exact(8).zip(self.expect.iter()) {
                    let mut word = [0u8; 8];
                    word.copy_from_slice(chunk);
                    let got = u64::from_le_bytes(word);
                    ok &= got == *w;
                    self.progress.digest = digest_step(self.progress.digest, got);
                }
                if ok {
                    self.progress.verified += 1;
                } else {
                    self.progress.errors += 1;
                }
            }
        }
        self.k += 1;
        if self.k == self.per_iteration {
            self.k = 0;
            self.phase = match self.phase {
                Phase::Write => Phase::Verify,
                _ => self.finish_iteration(),
            };
        }
        true
    }

    fn finish_iteration(&mut self) -> Phase {
        if self.blk.flush().is_err() {
            self.progress.errors += 1;
        }
        let p = self.progress;
        crate::control::report(
            abi::REPORT_DISK_ITERATION,
            [p.iterations, p.digest, p.verified, p.errors],
        );
        self.progress.iterations += 1;
        if self.iterations != 0 && self.progress.iterations >= self.iterations {
            Phase::Done
        } else {
            Phase::Write
        }
    }
}

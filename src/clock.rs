//! The processing-time clock: what sources stamp events with, and what TTLs, epochs
//! and retries count in; and a thread's CPU time (what a checkpoint part cost).

/// The CPU time the calling thread has used (zero where the clock cannot be read).
pub fn thread_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a timespec the call may write; the clock id is libc's constant.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Processing time now, in epoch milliseconds: the clock sources stamp events with.
pub fn now_ms() -> crate::model::Time {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Work on the thread counts; sleeping does not.
    #[test]
    fn a_threads_cpu_time_counts_its_work_not_its_sleep() {
        let start = thread_cpu_time();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let slept = thread_cpu_time() - start;
        let mut x = 1u64;
        let busy = std::time::Instant::now();
        while thread_cpu_time() - start < slept + std::time::Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            assert!(
                busy.elapsed() < std::time::Duration::from_secs(20),
                "no CPU counted"
            );
        }
        assert!(slept < std::time::Duration::from_millis(20), "{slept:?}");
    }
}

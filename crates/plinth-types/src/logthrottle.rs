//! Log lines that anyone on the provisioning network can cause once per request (a refused TFTP
//! request, a bad or spoofed script request) are throttled per call site: at most `burst` lines
//! per `window`, and the first line after a quiet spell says how many were left out. A flood of
//! bad requests then costs the log a few lines a window, not a line per packet; the counters
//! (metrics) and the events (capped per machine) still count everything.
//!
//! ```
//! use std::time::Duration;
//! use plinth_types::logthrottle::LogThrottle;
//! static REFUSED: LogThrottle = LogThrottle::new(10, Duration::from_secs(10));
//! if let Some(suppressed) = REFUSED.check() {
//!     // tracing::warn!(suppressed, ..., "request refused");
//!     let _ = suppressed;
//! }
//! ```

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One call site's allowance: see the module's description.
#[derive(Debug)]
pub struct LogThrottle {
    burst: u32,
    window: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// When the current window started (`None` before the first line).
    started: Option<Instant>,
    /// Lines logged in the current window.
    logged: u32,
    /// Lines left out since the last one logged.
    suppressed: u64,
}

impl LogThrottle {
    /// At most `burst` lines per `window` (a `burst` of 0 counts as 1).
    pub const fn new(burst: u32, window: Duration) -> LogThrottle {
        LogThrottle {
            burst,
            window,
            state: Mutex::new(State {
                started: None,
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether a line may be logged now: `Some(n)`, with the number of lines left out since
    /// the last one logged (to log with it), or `None` (leave this one out; it is counted).
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let expired = s
            .started
            .is_none_or(|t| now.saturating_duration_since(t) >= self.window);
        if expired {
            s.started = Some(now);
            s.logged = 0;
        }
        if s.logged < self.burst.max(1) {
            s.logged += 1;
            Some(std::mem::take(&mut s.suppressed))
        } else {
            s.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_window_then_the_count_of_what_was_left_out() {
        let t = LogThrottle::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(t.check_at(at(0)), Some(0));
        assert_eq!(t.check_at(at(1)), Some(0));
        assert_eq!(t.check_at(at(2)), Some(0));
        for ms in 3..1003 {
            assert_eq!(t.check_at(at(ms)), None, "a flood: left out");
        }
        // A new window: the first line says how many were left out, the next ones none.
        assert_eq!(t.check_at(at(10_000)), Some(1000));
        assert_eq!(t.check_at(at(10_001)), Some(0));
        assert_eq!(t.check_at(at(10_002)), Some(0));
        assert_eq!(t.check_at(at(10_003)), None);
        // A quiet spell longer than a window: logged at once, with what was left out.
        assert_eq!(t.check_at(at(60_000)), Some(1));
    }

    #[test]
    fn a_burst_of_zero_still_logs_one_line_a_window() {
        let t = LogThrottle::new(0, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(t.check_at(t0), Some(0));
        assert_eq!(t.check_at(t0 + Duration::from_millis(10)), None);
        assert_eq!(t.check_at(t0 + Duration::from_secs(1)), Some(1));
    }

    #[test]
    fn call_sites_are_independent() {
        static A: LogThrottle = LogThrottle::new(1, Duration::from_secs(3600));
        static B: LogThrottle = LogThrottle::new(1, Duration::from_secs(3600));
        assert_eq!(A.check(), Some(0));
        assert_eq!(A.check(), None);
        assert_eq!(B.check(), Some(0), "B has its own allowance");
    }
}

//! The circuit for an API host that cannot be reached (connection refused, DNS failure, connect
//! timeout, TLS failure before the request went out). Such a call never reached the API, so it
//! is no attempt; but sending every waiting item into an outage only spins. After
//! [`OPEN_AFTER`] such failures in a row the circuit opens: everything waits, and one probe goes
//! out at growing intervals (1 s doubling to 30 s, with jitter). The first answer from the API,
//! whatever it says, closes it. Pure: time and the jitter draw are passed in.

use std::time::{Duration, Instant};

/// Calls that could not reach the API, in a row, before the circuit opens.
pub const OPEN_AFTER: u32 = 3;
/// The first wait before a probe, doubled after each failed probe…
pub const FIRST_PROBE: Duration = Duration::from_secs(1);
/// …up to this.
pub const MAX_PROBE: Duration = Duration::from_secs(30);

/// What the lane may send now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Closed: send as usual.
    Send,
    /// Open, and a probe is due: send one call (and only one) to find out.
    Probe,
    /// Open: send nothing before then.
    WaitUntil(Instant),
    /// Open, with the probe out: send nothing until it answers.
    WaitForProbe,
}

/// The state of the circuit.
#[derive(Debug, Clone, Default)]
pub struct Circuit {
    /// Calls that could not reach the API since the last that did.
    unreachable_in_row: u32,
    /// Open: when the next probe may go, and the wait that set it.
    open: Option<(Instant, Duration)>,
    /// A probe is out.
    probing: bool,
}

/// What a call's outcome did to the circuit, for the log and `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    /// It opened (or a probe failed): the next probe goes then.
    Opened {
        next_probe: Instant,
    },
    /// The API answered: closed again.
    Closed,
}

impl Circuit {
    /// Whether a call may go now.
    pub fn gate(&self, now: Instant) -> Gate {
        match self.open {
            None => Gate::Send,
            Some(_) if self.probing => Gate::WaitForProbe,
            Some((at, _)) if now < at => Gate::WaitUntil(at),
            Some(_) => Gate::Probe,
        }
    }

    /// The probe the gate allowed is sent: no other until its outcome is reported.
    pub fn probe_sent(&mut self) {
        if self.open.is_some() {
            self.probing = true;
        }
    }

    /// The probe the gate allowed was not sent after all: another may go.
    pub fn probe_dropped(&mut self) {
        self.probing = false;
    }

    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// A call could not reach the API; `probe`: it was the probe. `jitter` in [0, 1) spreads the
    /// probes (up to a quarter of the wait more).
    pub fn unreachable(&mut self, now: Instant, jitter: f64, probe: bool) -> Change {
        self.unreachable_in_row += 1;
        let wait = match self.open {
            // The probe failed: wait twice as long for the next.
            Some((_, last)) if probe => (last * 2).min(MAX_PROBE),
            // A call sent before the circuit opened: the probes keep their pace.
            Some(_) => return Change::None,
            None if self.unreachable_in_row >= OPEN_AFTER => FIRST_PROBE,
            None => return Change::None,
        };
        self.probing = false;
        let spread = wait.mul_f64(jitter.clamp(0.0, 1.0) / 4.0);
        let next_probe = now + wait + spread;
        self.open = Some((next_probe, wait));
        Change::Opened { next_probe }
    }

    /// A call reached the API (whatever it answered).
    pub fn reached(&mut self) -> Change {
        self.unreachable_in_row = 0;
        self.probing = false;
        match self.open.take() {
            Some(_) => Change::Closed,
            None => Change::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_unreachable_calls_open_it_and_probes_back_off_to_thirty_seconds() {
        let t0 = Instant::now();
        let mut c = Circuit::default();
        assert_eq!(c.unreachable(t0, 0.0, false), Change::None);
        assert_eq!(c.unreachable(t0, 0.0, false), Change::None);
        assert_eq!(c.gate(t0), Gate::Send, "two in a row: still closed");
        let Change::Opened { next_probe } = c.unreachable(t0, 0.0, false) else {
            panic!("the third opens it")
        };
        assert_eq!(next_probe, t0 + FIRST_PROBE);
        assert_eq!(c.gate(t0), Gate::WaitUntil(next_probe));
        assert_eq!(
            c.unreachable(t0, 0.0, false),
            Change::None,
            "a call sent before it opened does not delay the probe"
        );
        assert_eq!(c.gate(next_probe), Gate::Probe);
        c.probe_sent();
        assert_eq!(
            c.gate(next_probe),
            Gate::WaitForProbe,
            "one probe at a time"
        );
        let mut waits = Vec::new();
        let mut now = next_probe;
        for _ in 0..7 {
            let Change::Opened { next_probe } = c.unreachable(now, 0.0, true) else {
                panic!("a failed probe keeps it open")
            };
            waits.push((next_probe - now).as_secs());
            now = next_probe;
            assert_eq!(c.gate(now), Gate::Probe);
            c.probe_sent();
        }
        assert_eq!(waits, vec![2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn any_answer_closes_it_and_jitter_spreads_probes() {
        let t0 = Instant::now();
        let mut c = Circuit::default();
        for _ in 0..OPEN_AFTER {
            c.unreachable(t0, 0.0, false);
        }
        assert!(c.is_open());
        assert_eq!(c.reached(), Change::Closed);
        assert_eq!(c.gate(t0), Gate::Send);
        assert_eq!(c.reached(), Change::None);
        for _ in 0..OPEN_AFTER - 1 {
            c.unreachable(t0, 0.0, false);
        }
        let Change::Opened { next_probe } = c.unreachable(t0, 0.99, false) else {
            panic!("opened")
        };
        assert!(next_probe > t0 + FIRST_PROBE && next_probe <= t0 + FIRST_PROBE * 5 / 4);
    }
}

//! The machine's load, as `/proc/loadavg` reports it: benchmarks print it beside their figures
//! (a loaded machine gives slower figures, and the reader must be able to tell), and a wait
//! that gives up names it in its error.

use std::fmt;

/// The kernel's load averages: runnable (and uninterruptible) tasks, averaged over 1, 5 and
/// 15 minutes. They count every process on the machine, a benchmark's own included.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadAverage {
    /// Over the last minute.
    pub one: f64,
    /// Over the last 5 minutes.
    pub five: f64,
    /// Over the last 15 minutes.
    pub fifteen: f64,
}

impl LoadAverage {
    /// Reads `/proc/loadavg`; `None` where it cannot be read or parsed (not Linux, no /proc).
    pub fn now() -> Option<LoadAverage> {
        LoadAverage::parse(&std::fs::read_to_string("/proc/loadavg").ok()?)
    }

    /// Parses the first three fields of a `/proc/loadavg` line.
    pub fn parse(text: &str) -> Option<LoadAverage> {
        let mut fields = text.split_whitespace().map(str::parse::<f64>);
        let mut next = || fields.next()?.ok();
        Some(LoadAverage {
            one: next()?,
            five: next()?,
            fifteen: next()?,
        })
    }
}

impl fmt::Display for LoadAverage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2} {:.2} {:.2}", self.one, self.five, self.fifteen)
    }
}

/// "load average 1.20 0.80 0.50 on 2 CPUs", or what could not be read; for error messages.
pub fn describe() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    match LoadAverage::now() {
        Some(load) => format!("load average {load} on {cpus} CPUs"),
        None => format!("load average unknown (no /proc/loadavg) on {cpus} CPUs"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_averages_of_a_loadavg_line() {
        let load = LoadAverage::parse("3.21 2.38 1.26 4/97 1022\n").unwrap();
        assert_eq!(
            load,
            LoadAverage {
                one: 3.21,
                five: 2.38,
                fifteen: 1.26
            }
        );
        assert_eq!(load.to_string(), "3.21 2.38 1.26");
        assert_eq!(LoadAverage::parse("3.21 2.38"), None);
        assert_eq!(LoadAverage::parse("high 2 1"), None);
    }
}

//! The process's open-file limit: a manager holds a connection for every node (and a bench
//! of thousands of simulated nodes holds both ends of each), far past the usual soft limit
//! of 1,024. Docker's and containerd's units run with no such limit; shoal raises its own.

/// Raises the open-file limit to at least `want`: the soft limit up to the hard one, and the
/// hard one too where this process may (root, up to the kernel's `fs.nr_open`). Returns the
/// soft limit now in effect.
pub fn raise_open_files(want: u64) -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the limit into the struct we pass and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur >= want {
        return Ok(lim.rlim_cur);
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(lim.rlim_max);
    let raised = libc::rlimit {
        rlim_cur: want.min(nr_open.max(lim.rlim_max)),
        rlim_max: lim.rlim_max.max(want.min(nr_open)),
    };
    // SAFETY: setrlimit reads the struct we pass; the kernel checks the values.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return Ok(raised.rlim_cur);
    }
    // Not allowed to raise the hard limit: as far as it goes.
    let soft = libc::rlimit {
        rlim_cur: lim.rlim_max.min(want),
        rlim_max: lim.rlim_max,
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(soft.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asking for no more than the limit in effect changes nothing; asking for more raises
    /// the soft limit at least to what the hard limit allows.
    #[test]
    fn the_limit_only_goes_up() {
        let now = raise_open_files(0).unwrap();
        assert!(now > 0);
        assert_eq!(raise_open_files(now).unwrap(), now);
        let mut hard = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct only.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut hard) },
            0
        );
        // The soft limit may always go up to the hard one.
        assert_eq!(raise_open_files(hard.rlim_max).unwrap(), hard.rlim_max);
    }
}

//! Enslaving an interface to a Linux bridge with the `SIOCBRADDIF` ioctl.
//!
//! Hand-written (one ioctl) rather than pulling in a netlink stack such as
//! rtnetlink, or shelling out to `ip`, which a daemon should not depend on.
//! The only module of this crate with unsafe code (FFI to libc).

#![allow(unsafe_code)]

use std::io;

use super::PortError;

/// `SIOCBRADDIF` from linux/sockios.h (libc does not export it for Linux).
const SIOCBRADDIF: libc::c_ulong = 0x89a2;

/// Adds interface `port` to bridge `bridge`.
pub fn enslave_to_bridge(port: &str, bridge: &str) -> Result<(), PortError> {
    let err = |source| PortError::Bridge {
        port: port.into(),
        bridge: bridge.into(),
        source,
    };
    let index = if_index(port).map_err(err)?;
    if bridge.is_empty() || bridge.len() >= libc::IFNAMSIZ {
        return Err(PortError::BadName(bridge.into()));
    }
    // SAFETY: an all-zero ifreq is a valid value (plain integers, arrays and
    // a union of plain data).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(bridge.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_ifindex = index as libc::c_int;
    // SAFETY: socket() has no memory preconditions; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // SAFETY: fd is a socket we own; req is a valid ifreq that outlives the
    // call, with a NUL-terminated name (zeroed tail, length checked above).
    let rc = unsafe { libc::ioctl(fd, SIOCBRADDIF as _, &mut req as *mut libc::ifreq) };
    let result = if rc < 0 {
        Err(err(io::Error::last_os_error()))
    } else {
        Ok(())
    };
    // SAFETY: fd is open and owned here; closed exactly once.
    unsafe { libc::close(fd) };
    result
}

fn if_index(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name contains NUL"))?;
    // SAFETY: c is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(idx)
    }
}

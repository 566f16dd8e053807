"""The kernel's part of the sandbox (issue #13): what model-written code cannot do, enforced by Linux.

``rewards.sandbox.run_sandboxed`` starts its child through ``namespace_command`` and runs
``LOCKDOWN`` (Python source, part of the child's program) before any model-written code:

1. Namespaces (util-linux ``unshare``, no extra install): its own user, pid, network, IPC, UTS and
   mount namespaces. No network interface but a down loopback; no other process visible (a fresh
   ``/proc``); a root file system of its own (``pivot_root``): a size-limited tmpfs (the only place
   it can write; the limit is for all its files together) holding read-only binds of the Python
   installation and the system libraries, and nothing else of the host's, not even its metadata.
2. Landlock: reads only under the Python installation and the system's library folders (and
   ``/dev/null``, ``/dev/urandom``), writes only in the tmpfs, no TCP, signals and abstract UNIX
   sockets scoped to the sandbox.
3. All capabilities dropped (bounding set too), ``no_new_privs``.
4. A seccomp filter: no process or thread creation, no exec, no signals but to itself, no sockets but
   ``AF_UNIX``, no device nodes, no mounts, namespaces, tracing, priority changes, kernel keyrings,
   BPF, io_uring or module loading. A refused system call fails with ``EPERM`` (the code sees an
   ``OSError``); the process is killed only for a foreign syscall ABI.

The process count of the whole sandbox is therefore one, so its address-space limit is the whole
sandbox's memory. ``features()`` says what this host's kernel offers; the sandbox refuses to run
without all of it unless the caller accepts a weaker one.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

UNSHARE_FLAGS = (
    "--user",
    "--map-root-user",
    "--pid",
    "--fork",
    "--kill-child",
    "--net",
    "--ipc",
    "--uts",
    "--mount",
    "--mount-proc",
)
MIN_LANDLOCK_ABI = 1  # file access rules; TCP rules (4) and scoping (6) are used when the kernel has them


@functools.lru_cache(maxsize=1)
def features() -> dict:
    """What this host offers: ``{"namespaces", "landlock" (ABI, 0 = none), "seccomp", "missing": [why]}``."""
    missing = []
    unshare = shutil.which("unshare")
    namespaces = False
    if unshare is None:
        missing.append("the unshare command (util-linux) is not installed")
    else:
        try:
            done = subprocess.run([unshare, *UNSHARE_FLAGS, "true"], capture_output=True, timeout=10)
            namespaces = done.returncode == 0
            if not namespaces:
                missing.append(
                    f"user/pid/network/mount namespaces: {done.stderr.decode(errors='replace').strip()[:200]}"
                )
        except (OSError, subprocess.TimeoutExpired) as e:
            missing.append(f"user/pid/network/mount namespaces: {e}")
    abi = landlock_abi()
    if abi < MIN_LANDLOCK_ABI:
        missing.append("Landlock (Linux >= 5.13 with landlock in the LSM list)")
    seccomp = platform.machine() == "x86_64" and Path("/proc/self/status").read_text().find("Seccomp:") >= 0
    if not seccomp:
        missing.append(f"a seccomp filter for {platform.machine()} (only x86_64 is written)")
    return {"namespaces": namespaces, "landlock": abi, "seccomp": seccomp, "missing": missing}


def landlock_abi() -> int:
    """The kernel's Landlock ABI version (0: none)."""
    if platform.machine() not in ("x86_64", "aarch64") or not sys.platform.startswith("linux"):
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    version = libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))  # LANDLOCK_CREATE_RULESET_VERSION
    return max(int(version), 0)


def namespace_command(argv: list[str]) -> list[str]:
    """``argv`` run in fresh namespaces (as ``features()["namespaces"]`` says the host allows)."""
    return [shutil.which("unshare") or "unshare", *UNSHARE_FLAGS, *argv]


def read_roots() -> list[str]:
    """Folders the sandboxed interpreter may read (and run libraries from): its own installation and
    the system's library folders."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    roots |= {str(Path(p).resolve()) for p in ("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib")}
    roots.add("/etc/ld.so.cache")
    return sorted(r for r in roots if os.path.exists(r))


# The child's part, run by the sandbox's program before any model-written code (and before its own
# audit hook). ``_kernel_init`` and ``_kernel_root`` right after start; ``_kernel_lockdown`` last.
LOCKDOWN = r'''
import ctypes as _ct, os, struct as _st

_libc = _ct.CDLL(None, use_errno=True)


def _kernel_fail(what):
    raise OSError(_ct.get_errno(), f"sandbox lockdown: {what}: {os.strerror(_ct.get_errno())}")


def _kernel_init():
    """Fork: the parent stays the namespace's init (pid 1, which the kernel spares the CPU limit's
    signals) and exits as its child did, ``128 + signal`` for a signal; the child returns and goes on."""
    pid = os.fork()
    if pid == 0:
        return
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))


def _kernel_mount(source, target, fstype, flags, data=None):
    if _libc.mount(source, target.encode(), fstype, _ct.c_ulong(flags), data) != 0:
        _kernel_fail(f"mount {target}")


def _kernel_root(workdir, size_mb, reads):
    """A new root file system, and nothing else of the host's: a tmpfs of ``size_mb`` (the only writable
    place, every file in it together) holding read-only binds of ``reads`` (the Python installation,
    the system libraries), ``/dev/null``, ``/dev/urandom``, this namespace's ``/proc`` and the working
    directory at its own path; ``pivot_root`` into it and the host's tree detached."""
    bind, rec, remount, rdonly, nosuid, nodev = 4096, 16384, 32, 1, 2, 4
    root = workdir  # the host's empty directory, only a mount point
    _kernel_mount(b"tmpfs", root, b"tmpfs", nosuid | nodev, f"size={size_mb}m,mode=0755".encode())
    for path in list(reads) + ["/dev/null", "/dev/urandom"]:
        target = root + path
        if os.path.isdir(path):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "a").close()
        _kernel_mount(path.encode(), target, None, bind | rec)
        _kernel_mount(None, target, None, bind | remount | rdonly | nosuid | (0 if path.startswith("/dev/") else nodev))
    os.makedirs(root + "/proc")
    _kernel_mount(b"proc", root + "/proc", b"proc", nosuid | nodev | 8)  # MS_NOEXEC
    os.makedirs(root + workdir, mode=0o700)
    os.makedirs(root + "/.old")
    if _libc.syscall(155, root.encode(), (root + "/.old").encode()) != 0:  # pivot_root
        _kernel_fail("pivot_root")
    os.chdir("/")
    if _libc.umount2(b"/.old", 2) != 0:  # MNT_DETACH
        _kernel_fail("umount old root")
    os.rmdir("/.old")
    os.chdir(workdir)


def _kernel_landlock(abi, reads, workdir):
    if abi < 1:
        return
    fs = (1 << 13) - 1 | (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0) | (1 << 15 if abi >= 5 else 0)
    net = 3 if abi >= 4 else 0  # BIND_TCP | CONNECT_TCP: no rule grants them
    scoped = 3 if abi >= 6 else 0  # ABSTRACT_UNIX_SOCKET | SIGNAL
    attr = _st.pack("<QQQ", fs, net, scoped)[: 8 if abi < 4 else (16 if abi < 6 else 24)]
    ruleset = _libc.syscall(444, attr, _ct.c_size_t(len(attr)), _ct.c_uint32(0))
    if ruleset < 0:
        _kernel_fail("landlock ruleset")
    read = (1 << 0 | 1 << 2 | 1 << 3) & fs  # EXECUTE | READ_FILE | READ_DIR
    file_rights = (1 << 1 | 1 << 2 | 1 << 14 | 1 << 15) & fs  # WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
    write = fs & ~(1 << 6 | 1 << 11)  # everything but MAKE_CHAR and MAKE_BLOCK (device nodes)
    rules = [(p, read) for p in reads] + [("/dev/null", file_rights), ("/dev/urandom", 1 << 2), (workdir, write)]
    for path, access in rules:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        if os.path.isfile(path) or path.startswith("/dev/"):
            access &= file_rights
        rule = _st.pack("<Qi", access, fd)
        rc = _libc.syscall(445, _ct.c_int(ruleset), _ct.c_int(1), rule, _ct.c_uint32(0))  # PATH_BENEATH
        os.close(fd)
        if rc != 0:
            _kernel_fail(f"landlock rule for {path}")
    if _libc.syscall(446, _ct.c_int(ruleset), _ct.c_uint32(0)) != 0:
        _kernel_fail("landlock restrict_self")
    os.close(ruleset)


def _kernel_drop_capabilities():
    for cap in range(64):
        _libc.prctl(24, _ct.c_ulong(cap), 0, 0, 0)  # PR_CAPBSET_DROP (EINVAL past the last one)
    header = _st.pack("<Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = bytes(24)  # effective, permitted, inheritable: empty (two 32-bit halves)
    if _libc.syscall(126, header, data) != 0:  # capset
        _kernel_fail("capset")


_DENY = (57, 58, 56, 435, 59, 322, 434, 424, 438, 141, 142, 144, 314, 251, 101, 310, 311, 312, 165, 166, 155,
         161, 272, 308, 321, 298, 250, 248, 249, 425, 426, 427, 323, 246, 320, 175, 313, 176, 169, 167, 168,
         163, 135, 133, 259, 428, 429, 430, 431, 432, 433, 442, 179, 173, 172, 303, 304, 164, 227, 159, 305,
         170, 171, 153, 103, 212, 256, 279)
# fork vfork clone clone3 execve execveat pidfd_open pidfd_send_signal pidfd_getfd setpriority
# sched_setparam sched_setscheduler sched_setattr ioprio_set ptrace process_vm_readv/writev kcmp mount
# umount2 pivot_root chroot unshare setns bpf perf_event_open keyctl add_key request_key io_uring_*
# userfaultfd kexec_load kexec_file_load init_module finit_module delete_module reboot swapon swapoff
# acct personality mknod mknodat open_tree move_mount fsopen fsconfig fsmount fspick mount_setattr
# quotactl ioperm iopl name_to_handle_at open_by_handle_at settimeofday clock_settime adjtimex
# clock_adjtime sethostname setdomainname vhangup syslog lookup_dcookie migrate_pages move_pages


def _kernel_seccomp(me):
    ld, jeq, ret = 0x20, 0x15, 0x06
    allow, kill, eperm = 0x7FFF0000, 0x80000000, 0x00050000 | 1

    def op(code, jt=0, jf=0, k=0):
        return _st.pack("<HBBI", code, jt, jf, k)

    prog = [op(ld, k=4), op(jeq, 1, 0, 0xC000003E), op(ret, k=kill), op(ld, k=0),
            op(0x35, 0, 1, 0x40000000), op(ret, k=kill)]  # x86_64 only; no x32 numbers
    for nr, arg0 in ((41, 1), (53, 1), (62, me), (200, me), (234, me)):  # socket(pair): AF_UNIX; kill, tkill, tgkill: itself
        prog += [op(jeq, 0, 4, nr), op(ld, k=16), op(jeq, 0, 1, arg0), op(ret, k=allow), op(ret, k=eperm)]
    for nr in _DENY:
        prog += [op(jeq, 0, 1, nr), op(ret, k=eperm)]
    prog.append(op(ret, k=allow))
    code = b"".join(prog)
    buf = _ct.create_string_buffer(code, len(code))
    fprog = _st.pack("<HxxxxxxQ", len(prog), _ct.addressof(buf))
    if _libc.prctl(22, _ct.c_ulong(2), fprog, 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        _kernel_fail("seccomp")


def _kernel_lockdown(kernel, workdir):
    """Landlock, capabilities, no_new_privs, seccomp: after this the process can only lose powers."""
    if _libc.prctl(38, _ct.c_ulong(1), 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        _kernel_fail("no_new_privs")
    _kernel_landlock(kernel["landlock"], kernel["reads"], workdir)
    _kernel_drop_capabilities()
    if kernel["seccomp"]:
        _kernel_seccomp(os.getpid())
'''

"""The machine a run is on: which device and precision, how much memory it peaked at, how long it
has left, how a Ctrl-C stops it cleanly, and what happens when its disk fills or a second run
starts in its folder. train.py, eval.py, bench.py and experiments/profile_step.py all choose their
device and their precision here, by the same rules.

Nothing here is Unix-only at import time: the peak resident size comes from /proc on Linux, from
`resource` on macOS and other Unixes, and from the Win32 API on Windows; the folder lock is
fcntl's on Unix and msvcrt's on Windows, each imported where it is used.
"""

import contextlib
import gc
import os
import signal
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist


class InputError(Exception):
    """A problem with what the user gave us (a path, a file's contents, an option): one line."""


class WriteError(Exception):
    """A write that failed for a reason of the machine, not of the code (no space left, no
    permission): one line naming the path, what failed and what is still good."""


# -----------------------------------------------------------------------------
# Writes that fail cleanly.

def os_error_of(error):
    """The OSError behind `error`: itself, or the one torch.save wrapped into a RuntimeError
    ("[enforce fail at inline_container.cc] unexpected pos ...") when the file object failed."""
    while error is not None and not isinstance(error, OSError):
        error = error.__cause__ or error.__context__
    return error


def reason(error):
    """"no space left on device", "permission denied", ...: the OS's words, lower case."""
    text = error.strerror or os.strerror(error.errno) if error.errno else str(error)
    return text[:1].lower() + text[1:]


def save_atomic(obj, path, tmp=None):
    """torch.save to a temporary file, flushed to the disk, then renamed over `path`: a save that is
    interrupted or fills the disk never leaves a torn file, and the earlier `path` stays intact.
    A failure of the machine (the disk full, no permission) removes the temporary file and raises
    WriteError naming `path` and the reason; anything else is raised as it is."""
    tmp = tmp or f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())          # a full disk shows here, not later on close or rename
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        cause = os_error_of(e)
        if cause is None:
            raise
        raise WriteError(f"cannot write {path}: {reason(cause)}") from None


def write_text(path, text, mode="w"):
    """Write (or with mode "a", append) text; a failure of the machine is a WriteError. A new file
    is written to a temporary one and renamed, like save_atomic."""
    tmp = f"{path}.tmp" if mode == "w" else path
    try:
        with open(tmp, mode, encoding="utf-8") as f:
            f.write(text)
        if tmp != path:
            os.replace(tmp, path)
    except OSError as e:
        if tmp != path:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        raise WriteError(f"cannot write {path}: {reason(e)}") from None


def make_folder(option, folder, given=None):
    """Create `folder` (and its parents) for `option`, or InputError in one line naming the option
    and the value `given` to it (default: the folder): a file in the way (the folder itself, or a
    parent on its path), no permission to write."""
    given = given or folder
    try:
        os.makedirs(folder, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = os.path.abspath(folder)
        while not os.path.lexists(blocker):
            blocker = os.path.dirname(blocker)
        what = "is a file, not a folder"
        if os.path.islink(blocker) and not os.path.exists(blocker):
            what = f"is a link to {os.readlink(blocker)}, which does not exist"
        raise InputError(f"{option} {given}: {blocker} {what}: choose another {option}") from None
    except OSError as e:
        raise InputError(f"{option} {given}: cannot create {folder} ({reason(e)}): choose another "
                         f"{option}") from None
    if not os.access(folder, os.W_OK):
        raise InputError(f"{option} {given}: no permission to write in {folder}: choose another "
                         f"{option}")


def check_output_file(option, path):
    """Before any slow work: `path` can be written (its folder is created). InputError naming the
    option otherwise: a folder in the way, a path through a file, no permission."""
    if os.path.isdir(path):
        raise InputError(f"{option} {path} is a folder: give a file name")
    make_folder(option, os.path.dirname(os.path.abspath(path)), given=path)
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise InputError(f"{option} {path}: no permission to write there")


# -----------------------------------------------------------------------------
# One run per output folder.

LOCK_NAME = ".lock"
_LOCK_AT = 1 << 20   # Windows locks a byte range: one far past the pid written at the start


class FolderLock:
    """An exclusive lock on FOLDER/.lock for as long as this process lives. The operating system
    releases it when the process ends, however it ends (a kill, a power cut of the process), so a
    dead run never leaves a stale lock. A second process asking for it gets InputError at once,
    naming the folder and the process that holds it (its pid is written in the file). Readers,
    such as eval.py on a folder that a run is writing, take no lock."""

    def __init__(self, folder):
        self.path = os.path.join(folder, LOCK_NAME)
        self.file = open(self.path, "a+", encoding="ascii")
        try:
            self._lock()
        except OSError:
            self.file.seek(0)
            holder = self.file.read(32).strip()
            self.file.close()
            who = f"process {holder}" if holder.isdigit() else "another process"
            raise InputError(f"--out {folder} is in use by {who} (another train.py on the same "
                             f"folder): wait for it to end, or choose another --out") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()

    def _lock(self):
        if sys.platform == "win32":
            import msvcrt
            self.file.seek(_LOCK_AT)
            msvcrt.locking(self.file.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl
            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    @classmethod
    def none(cls):
        """A lock that holds nothing: what the ranks other than 0 of one torchrun get."""
        lock = cls.__new__(cls)
        lock.file = None
        return lock

    def release(self):
        if self.file is not None and not self.file.closed:
            self.file.close()                 # closing the file releases either kind of lock


def _mps_available():
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def pick_device(name="auto"):
    """"auto": CUDA, else Apple's MPS, else the CPU. A device named outright must be usable here:
    otherwise ValueError says why in one line, before any data is prepared for it."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{name}: not a device name; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}: no usable CUDA device here (no NVIDIA driver or card, or a "
                             f"CPU-only torch); use --device cpu, or auto") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{name}: this machine has {torch.cuda.device_count()} CUDA "
                             f"device(s), numbered from 0")
    elif device.type == "mps" and not _mps_available():
        raise ValueError(f"{name}: Apple's MPS is not available here (it needs macOS 12.3+ on "
                         f"Apple silicon); use --device cpu, or auto")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{name}: this project runs on cpu, cuda or mps")
    return device


def resolve_precision(precision, device):
    """"auto" is what the device computes natively: bf16 autocast on a CUDA card with bf16 tensor
    cores (compute capability 8.0 or newer: A100, RTX 30xx and later) and on ROCm; fp16 with a
    loss scaler on older CUDA cards (T4, RTX 20xx, GTX 16xx: 7.5), where torch would otherwise
    emulate bf16 (torch.cuda.is_bf16_supported() counts emulation as support); fp32 on the CPU and
    MPS (autocast there is slower than fp32 for this model). An explicit choice is kept."""
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "fp32"
    if torch.version.hip:
        return "bf16"
    return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"


def precision_reason(precision, device):
    """Why resolve_precision chose what it chose, in words for the run's start-up line."""
    if precision != "auto":
        return f"--precision {precision}"
    if device.type != "cuda":
        return f"auto: fp32 on {device.type}"
    if torch.version.hip:
        return "auto: ROCm computes bf16 natively"
    major, minor = torch.cuda.get_device_capability(device)
    native = "has bf16 tensor cores" if major >= 8 else "has no bf16 tensor cores: fp16 with a loss scaler"
    return f"auto: compute capability {major}.{minor} {native}"


def pick_precision(precision, device):
    """(autocast context, GradScaler or None, the resolved name) for --precision on `device`. The
    context is entered around each forward pass (`with autocast:`), as nanoGPT's `ctx`."""
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext(), None, precision
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    autocast = torch.autocast(device_type=device.type, dtype=dtype)
    # fp16 has a narrow exponent range: scale the loss so small gradients do not flush to zero.
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    return autocast, scaler, precision


def _proc_status_mb(field):
    """A field of /proc/self/status in MB (Linux), or None where there is no such file."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _windows_peak_mb():
    """PeakWorkingSetSize from GetProcessMemoryInfo (psapi), through ctypes: no extra package."""
    import ctypes
    from ctypes import wintypes

    class Counters(ctypes.Structure):
        _fields_ = [("cb", wintypes.DWORD), ("PageFaultCount", wintypes.DWORD)] + [
            (name, ctypes.c_size_t) for name in (
                "PeakWorkingSetSize", "WorkingSetSize", "QuotaPeakPagedPoolUsage",
                "QuotaPagedPoolUsage", "QuotaPeakNonPagedPoolUsage", "QuotaNonPagedPoolUsage",
                "PagefileUsage", "PeakPagefileUsage")]

    counters = Counters()
    counters.cb = ctypes.sizeof(Counters)
    process = ctypes.windll.kernel32.GetCurrentProcess()
    if not ctypes.windll.psapi.GetProcessMemoryInfo(process, ctypes.byref(counters), counters.cb):
        return None
    return counters.PeakWorkingSetSize / 2**20


def peak_rss_mb():
    """This process's peak resident size in MB, or None where the platform does not tell.
    On Linux VmHWM, the high-water mark of this process's own address space: ru_maxrss would also
    count a parent's size, which Linux carries across fork + exec."""
    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    if sys.platform == "win32":
        return _windows_peak_mb()
    try:
        import resource                       # Unix only: imported here, never at module load
    except ImportError:
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10   # macOS bytes, others kB


def peak_memory_mb(device):
    """What a run's log calls memory: the device's peak allocation on CUDA, else the process's
    peak resident size (None where unknown)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


@dataclass
class Run:
    """Where this process runs: its rank among `world` processes and its device."""
    rank: int
    world: int
    device: torch.device
    ddp: bool

    @property
    def master(self):
        return self.rank == 0


def setup_distributed(device_name):
    """torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them, one process. Raises ValueError
    for a device that is not usable here."""
    device = pick_device(device_name)
    if int(os.environ.get("RANK", -1)) == -1:
        return Run(0, 1, device, ddp=False)
    rank, world, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Run(rank, world, device, ddp=True)


def leave_distributed(parts):
    """The end of a torchrun process: wait for every rank (rank 0 may still be evaluating), then
    free the DistributedDataParallel wrapper `parts.model` before the process group goes.

    DDP sits in a reference cycle, and its reducer holds the process group, so without the
    collection the group outlives destroy_process_group() until the garbage collector runs, as late
    as the interpreter's own exit. Gloo's threads torn down that late can abort the process
    ("terminate called without an active exception", exit -6) after a finished run."""
    dist.barrier()
    parts.model = None
    gc.collect()
    dist.destroy_process_group()


class Clock:
    """Seconds per optimizer step for samples/s and the time left: this process's first step
    (warm-up, compilation) and evaluations are left out."""

    def __init__(self):
        self.start, self.steps, self.seconds, self.last, self.loss = time.time(), 0, 0.0, 0.0, None

    def step_done(self, seconds, loss):
        if self.loss is not None:
            self.steps, self.seconds = self.steps + 1, self.seconds + seconds
        self.last, self.loss = seconds, loss

    def per_step(self):
        return self.seconds / self.steps if self.steps else self.last

    def elapsed(self):
        return time.time() - self.start

    @contextlib.contextmanager
    def paused(self):
        t = time.time()
        yield
        self.start += time.time() - t


def fmt_time(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class StopFlag:
    """Ctrl-C (SIGINT) or SIGTERM ask the loop to stop after the step in progress, save and exit.

    One request can arrive as several signals: a terminal's Ctrl-C reaches every process of its
    group, and torchrun forwards the one it gets to its workers too. So a signal within GRACE_S
    seconds of the first is the same request; only one later than that (the user pressing Ctrl-C
    again) quits at once, without saving. Under DDP the ranks agree each step (any_rank), so that
    every rank stops after the same step and the checkpoint is written."""

    GRACE_S = 3.0

    def __init__(self):
        self.requested = False
        self.first = None
        signal.signal(signal.SIGINT, self._handler)
        signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum, frame):
        now = time.monotonic()
        if self.requested:
            if now - self.first > self.GRACE_S:     # a second request: the user really wants out
                raise KeyboardInterrupt
            return                                  # the same request, delivered twice
        self.requested, self.first = True, now
        print("\nstop requested: finishing this step, saving a checkpoint, then exiting "
              f"(Ctrl-C again, after {self.GRACE_S:g} s, to quit without saving)", flush=True)

    def any_rank(self, device):
        """Whether any rank was asked to stop (one all-reduce of one number under DDP; this
        process's flag otherwise). Every rank calls it once per step, at the same point."""
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self.requested
        flag = torch.tensor([float(self.requested)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def send_signal_to_self(kind):
    """The test hooks --interrupt-at and --kill-at: "interrupt" is a Ctrl-C, "kill" a machine that
    dies with nothing saved (SIGKILL; on Windows, which has none, an immediate exit)."""
    if kind == "interrupt":
        os.kill(os.getpid(), signal.SIGINT)
    elif hasattr(signal, "SIGKILL"):
        os.kill(os.getpid(), signal.SIGKILL)
    else:
        os._exit(137)


def worker_signals():
    """A pool worker inherits its parent's signal handlers. train.py's Ctrl-C handler only sets a
    flag, so a worker keeping it would ignore the SIGTERM the pool sends it on closing, and the
    pool would wait for it forever. Workers get the default SIGTERM back and leave Ctrl-C
    (which the terminal sends to the whole process group) to the parent."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

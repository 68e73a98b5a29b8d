"""The machine a run is on: which device and precision, how much memory it peaked at, how long it
has left, and how a Ctrl-C stops it cleanly. train.py, eval.py, bench.py and profile_step.py all
choose their device and precision here, so the four agree.

Nothing here is Unix-only at import time: the peak resident size comes from /proc on Linux, from
`resource` on macOS and other Unixes, and from the Win32 API on Windows.
"""

import contextlib
import functools
import os
import signal
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist


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
    """"auto" is bf16 autocast on a CUDA card that has bf16, fp16 with a loss scaler on one that
    has not, and fp32 elsewhere (autocast on the CPU or MPS is slower than fp32 for this model)."""
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def pick_precision(precision, device):
    """(autocast factory, GradScaler or None, the resolved name) for --precision on `device`."""
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext, None, precision
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    autocast = functools.partial(torch.autocast, device_type=device.type, dtype=dtype)
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
    """Ctrl-C (SIGINT) or SIGTERM ask the loop to stop after the step in progress, save and exit."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGINT, self._handler)
        signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum, frame):
        if self.requested:                 # a second Ctrl-C: the user really wants out now
            raise KeyboardInterrupt
        self.requested = True
        print("\nstop requested: finishing this step, saving a checkpoint, then exiting "
              "(Ctrl-C again to quit without saving)", flush=True)


def send_signal_to_self(kind):
    """The test hooks --interrupt-at and --kill-at: "interrupt" is a Ctrl-C, "kill" a machine that
    dies with nothing saved (SIGKILL; on Windows, which has none, an immediate exit)."""
    if kind == "interrupt":
        os.kill(os.getpid(), signal.SIGINT)
    elif hasattr(signal, "SIGKILL"):
        os.kill(os.getpid(), signal.SIGKILL)
    else:
        os._exit(137)

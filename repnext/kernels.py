"""Notebook kernels forked from a process that has already imported torch, timm and this package.

A Jupyter kernel is normally a new interpreter, and the first cell of every notebook here spends
about six seconds importing torch and timm (timm pulls in torchvision and torch._dynamo). A
pipeline stage pays that twice: once in the ``repnext`` command, once in its kernel. Instead, a
*kernel server* is started once per process: a child that imports this package and the kernel
machinery, runs nothing, and then forks one kernel per request. Each forked kernel starts with
those modules loaded but otherwise as a new kernel would: its own session (process group), the
environment and working directory Jupyter asks for, and no thread pool (a fork copies only the
forking thread, and the server never ran a torch operation, so no OpenMP team exists to break).

The server itself is forked from the caller when that is safe (the caller runs no other thread:
a fresh ``repnext notebook`` process), so the imports are not paid again; otherwise (a test
process whose OpenMP pool is running) it is spawned as a new interpreter, once, and reused.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import multiprocessing
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from jupyter_client.provisioning import LocalProvisioner
from jupyter_core.paths import jupyter_runtime_dir

__all__ = ["KernelServer", "ServedKernelManager", "kernel_server"]

_THREAD_VARIABLES = ("OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_")
_PRELOAD = ("repnext", "repnext.analysis", "ipykernel.kernelapp", "ipykernel.ipkernel")


def _os_threads() -> int | None:
    """Threads of this process, from ``/proc`` (``None`` where it cannot be read)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def _fork_is_safe() -> bool:
    """Whether forking this process gives a child that can run torch: no Python thread besides this
    one and no thread pool started (importing torch starts one helper thread; an OpenMP team adds more)."""
    threads = _os_threads()
    return threading.active_count() == 1 and threads is not None and threads <= 2 and hasattr(os, "fork")


def _serve(conn) -> None:
    """The server: import, then fork a kernel for every ``(argv, env, cwd)`` request; answer its pid."""
    import importlib

    for name in _PRELOAD:
        importlib.import_module(name)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # kernels are reaped by the system, never zombies
    conn.send("ready")
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        pid = os.fork()
        if pid == 0:
            conn.close()
            _run_kernel(*request)
        conn.send(pid)


def _run_kernel(argv: list[str], env: dict[str, str], cwd: str) -> None:
    """In the forked child: become a kernel as ``python -m ipykernel_launcher ARGS`` would, then exit."""
    status = 0
    try:
        os.setsid()  # its own process group, as Jupyter launches kernels: signals reach its children too
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env, JPY_PARENT_PID=str(os.getppid()))
        sys.argv = [sys.executable, *argv]
        from ipykernel.kernelapp import IPKernelApp

        app = IPKernelApp.instance(parent_handle=os.getppid())  # exits if the server goes, as Jupyter's kernels do
        app.initialize(argv)
        app.start()
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        status = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)


class KernelServer:
    """A child process that has imported torch, timm and ``repnext`` and forks kernels on request."""

    def __init__(self, start_method: str) -> None:
        context = multiprocessing.get_context(start_method)
        self._conn, child = context.Pipe()
        # Not a daemon: a daemon's descendants may not start processes (the latency stage's workers).
        self._process = context.Process(target=_serve, args=(child,), name="repnext-kernel-server")
        self._process.start()
        child.close()
        self._lock = threading.Lock()
        self._ready = False
        atexit.register(self.close)

    def close(self) -> None:
        """Stop the server (its running kernels stop when they notice, as on a parent's exit)."""
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    def launch(self, argv: list[str], env: dict[str, str], cwd: str) -> int:
        """Fork a kernel running ``ipykernel_launcher`` with ``argv`` (e.g. ``["-f", CONNECTION_FILE]``)."""
        with self._lock:
            if not self._ready:
                if self._conn.recv() != "ready":
                    raise RuntimeError("kernel server failed to start")
                self._ready = True
            self._conn.send((argv, env, cwd))
            return self._conn.recv()


@functools.cache
def _server(start_method: str, thread_settings: tuple[tuple[str, str], ...]) -> KernelServer:
    return KernelServer(start_method)


def _thread_settings(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((key, value) for key, value in env.items() if key.startswith(_THREAD_VARIABLES)))


def kernel_server() -> KernelServer:
    """This process's kernel server, started on first use: forked from here when safe, else spawned.
    Thread pools read their settings (``OMP_NUM_THREADS``...) once, when torch is imported, which the
    server has done: so there is one server per distinct setting of this process's environment."""
    return _server("fork" if _fork_is_safe() else "spawn", _thread_settings(os.environ))


class _ServedKernel:
    """The kernel's process seen through the methods Jupyter calls on a ``subprocess.Popen``."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                self.returncode = 0  # reaped by the server; its status is not ours to read
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"kernel {self.pid} still running after {timeout} s")
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class _ServedProvisioner(LocalProvisioner):
    """Jupyter's local provisioner, launching through the kernel server instead of a new interpreter."""

    async def launch_kernel(self, cmd: list[str], **kwargs) -> dict:
        env = {key: str(value) for key, value in (kwargs.get("env") or os.environ).items()}
        ours = cmd[:3] == [sys.executable, "-m", "ipykernel_launcher"]
        if not ours or _thread_settings(env) != _thread_settings(os.environ):
            return await super().launch_kernel(cmd, **kwargs)  # another interpreter, or other thread settings
        cwd = os.fspath(kwargs.get("cwd") or Path.cwd())
        pid = kernel_server().launch(cmd[3:], env, cwd)
        self.process = _ServedKernel(pid)
        self.pid = self.pgid = pid
        self.cwd = cwd
        return self.connection_info


class ServedKernelManager(AsyncKernelManager):
    """A kernel manager whose kernels come from :func:`kernel_server` (pass it as ``kernel_manager_class``).

    Where there are Unix sockets, kernel and client talk over ZeroMQ's ``ipc`` transport in Jupyter's runtime
    folder rather than over local TCP ports (which the kernel warns about on every start: unencrypted).
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        if os.name == "posix":
            runtime = Path(jupyter_runtime_dir())
            runtime.mkdir(parents=True, exist_ok=True)
            self.transport, self.ip = "ipc", str(runtime / f"kernel-{uuid.uuid4().hex[:12]}")

    async def _async_pre_start_kernel(self, **kw):
        if self.provisioner is None:
            self.kernel_id = self.kernel_id or kw.pop("kernel_id", str(uuid.uuid4()))
            self.provisioner = _ServedProvisioner(kernel_id=self.kernel_id, kernel_spec=self.kernel_spec, parent=self)
        return await super()._async_pre_start_kernel(**kw)

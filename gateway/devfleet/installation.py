"""Locates the ``tritonserver`` shipped in the nvidia-pytriton wheel and what it needs to run.

The wheel is installed with ``--no-deps`` into its own folder (its numpy<2 pin must not bind the
gateway), and the Python-backend models get their own small environment (numpy<2 and
onnxruntime) because the 2.51 backend stub returns empty tensors under numpy 2.
"""

from __future__ import annotations

import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from gateway.devfleet.errors import FleetError

INSTALL_HINT = (
    "run 'make install' (or scripts/install_triton.sh) to install the local Triton server"
)


@dataclass(frozen=True, slots=True)
class TritonInstallation:
    """Paths of one installed local Triton server; see ``locate``."""

    home: Path
    binary: Path
    library_dir: Path
    python_backend_dir: Path
    backend_stub: Path
    model_site_packages: Path
    python_library_dir: Path | None

    @classmethod
    def locate(cls, home: Path) -> TritonInstallation:
        """Find every part below ``home`` or raise ``FleetError`` naming what is missing."""
        home = home.resolve()
        package = home / "server" / "pytriton" / "tritonserver"
        binary = package / "bin" / "tritonserver"
        if not binary.is_file():
            raise FleetError(f"tritonserver not found at {binary}: {INSTALL_HINT}")
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = package / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise FleetError(f"no Python backend stub for Python {version} at {stub}")
        site = home / "model-env"
        if not (site / "onnxruntime").is_dir() or not (site / "numpy").is_dir():
            raise FleetError(
                f"model environment (numpy<2, onnxruntime) missing at {site}: {INSTALL_HINT}"
            )
        return cls(
            home=home,
            binary=binary,
            library_dir=home / "server" / "nvidia_pytriton.libs",
            python_backend_dir=package / "backends" / "python",
            backend_stub=stub,
            model_site_packages=site,
            python_library_dir=_python_library_dir(),
        )

    def library_path(self) -> str:
        """LD_LIBRARY_PATH for the server and its backend stubs (which embed libpython)."""
        parts = [str(self.library_dir)]
        if self.python_library_dir is not None:
            parts.append(str(self.python_library_dir))
        return ":".join(parts)


def _python_library_dir() -> Path | None:
    # The stub links libpython3.X.so dynamically; a pyenv or custom build keeps it outside the
    # loader's default path, so point the loader at this interpreter's own copy when it has one.
    libdir = sysconfig.get_config_var("LIBDIR")
    ldlibrary = sysconfig.get_config_var("LDLIBRARY")
    if libdir and ldlibrary and (Path(libdir) / str(ldlibrary)).exists():
        return Path(libdir)
    return None

#!/usr/bin/env bash
# Installs the local Triton server used by the dev fleet, the demo and the tests:
#  - the tritonserver binary from the nvidia-pytriton wheel, without its dependencies (its
#    numpy<2 pin must not constrain the gateway), into $TRITON_HOME/server;
#  - a small environment for the Python-backend models (numpy<2 + onnxruntime) into
#    $TRITON_HOME/model-env: the 2.51 backend stub returns empty tensors under numpy 2.
# Usage: scripts/install_triton.sh PYTHON TRITON_HOME
set -euo pipefail
python=${1:?python interpreter of the project environment}
home=${2:?install folder}

"$python" -m pip install --quiet --no-deps --upgrade --target "$home/server" nvidia-pytriton==0.7.0
"$python" -m pip install --quiet --upgrade --no-warn-conflicts --target "$home/model-env" \
    "numpy>=1.24,<2" "onnxruntime>=1.19"

# The backend stub embeds libpython of the same minor version as the project's interpreter.
if ! "$python" - <<'PY'
import ctypes.util, pathlib, sys, sysconfig
libdir, name = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
if libdir and name and (pathlib.Path(libdir) / name).exists() and name.endswith(".so"):
    sys.exit(0)
sys.exit(0 if ctypes.util.find_library(f"python{sys.version_info.major}.{sys.version_info.minor}") else 1)
PY
then
    version=$("$python" -c 'import sys; print(f"{sys.version_info.major}.{sys.version_info.minor}")')
    echo "libpython$version not found: installing it from Debian's packages" >&2
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq "libpython$version"
    else
        sudo apt-get update -qq && sudo apt-get install -y -qq "libpython$version"
    fi
fi
touch "$home/.installed"

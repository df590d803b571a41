"""deploy/consul/ against a real Consul: the service definitions a platform team installs on
its Triton and gateway hosts are valid agent configuration, and an agent registers them as the
gateway's Consul discovery expects (service name, checks)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from tests.support.consul import ConsulServer
from tests.support.tools import tool

DEPLOY_CONSUL = Path(__file__).resolve().parents[2] / "deploy" / "consul"
DEFINITIONS = ("triton.json", "gateway-service.json")


def test_the_service_definitions_are_valid_agent_configuration(tmp_path: Path) -> None:
    for name in DEFINITIONS:
        shutil.copy(DEPLOY_CONSUL / name, tmp_path / name)
    # Beside the host's own agent settings, of which validation needs the data folder.
    (tmp_path / "agent.json").write_text(json.dumps({"data_dir": str(tmp_path / "data")}))
    checked = subprocess.run(
        [tool("consul"), "validate", str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_an_agent_registers_them_with_their_checks(tmp_path: Path) -> None:
    with ConsulServer(tmp_path) as agent:
        for name in DEFINITIONS:
            registered = subprocess.run(
                [
                    tool("consul"),
                    "services",
                    "register",
                    f"-http-addr={agent.address}",
                    str(DEPLOY_CONSUL / name),
                ],
                check=False,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert registered.returncode == 0, registered.stdout + registered.stderr
        services = agent.client.agent.services()
        assert services["triton-gpu-0"]["Service"] == "triton"
        assert services["triton-gateway"]["Service"] == "triton-gateway"
        checks = agent.client.agent.checks()
        triton_checks = {c["CheckID"] for c in checks.values() if c["ServiceID"] == "triton-gpu-0"}
        assert triton_checks == {"triton-gpu-0-ready", "triton-gpu-0-grpc"}
        gateway_checks = [c for c in checks.values() if c["ServiceID"] == "triton-gateway"]
        assert [c["Type"] for c in gateway_checks] == ["grpc"]
        # Nothing listens on their ports here: the catalog lists none of them as passing,
        # which is what the gateway's discovery reads (only instances whose checks pass).
        _, passing = agent.client.health.service("triton", passing=True)
        assert passing == []

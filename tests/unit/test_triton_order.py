"""The order Triton walks a request's inputs in, checked against the real thing: a
std::unordered_map of GCC's libstdc++ (Triton's C++ library), compiled here with g++."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.backends.triton_order import map_order, std_hash

ORACLE = r"""
#include <functional>
#include <iostream>
#include <string>
#include <unordered_map>
int main() {
  std::string line;
  while (std::getline(std::cin, line)) {
    std::unordered_map<std::string, int> inputs;
    std::string name;
    for (char c : line + " ") {
      if (c != ' ') { name += c; continue; }
      if (!name.empty()) inputs.emplace(name, 0);
      name.clear();
    }
    for (const auto& pair : inputs) std::cout << pair.first << ' ';
    std::cout << '|' << std::hash<std::string>{}(line) << '\n';
  }
}
"""


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    compiler = shutil.which("g++")
    assert compiler, "g++ (Debian's, as make install needs a C toolchain) builds the oracle"
    folder = tmp_path_factory.mktemp("oracle")
    (folder / "order.cc").write_text(ORACLE)
    subprocess.run(
        [compiler, "-O1", "-o", str(folder / "order"), str(folder / "order.cc")], check=True
    )
    return folder / "order"


def ask(oracle: Path, lines: list[list[str]]) -> list[tuple[list[str], int]]:
    text = "".join(" ".join(names) + "\n" for names in lines)
    answer = subprocess.run(
        [str(oracle)], input=text, capture_output=True, text=True, check=True
    ).stdout
    found = []
    for row in answer.splitlines():
        order, _, hashed = row.rpartition("|")
        found.append((order.split(), int(hashed)))
    return found


def test_the_inputs_come_in_libstdcxx_order(oracle: Path) -> None:
    rng = random.Random(5)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"
    lines = [
        ["INPUT0", "INPUT1"],
        ["INPUT0", "INPUT1", "INPUT2"],
        ["A", "INPUT1", "INPUT2", "INPUT0"],
        ["INPUT0", "INPUT1", "INPUT0"],  # a repeated name keeps its first place
    ]
    for count in [*range(1, 40), 60, 130, 300]:
        lines.append(["".join(rng.choices(alphabet, k=rng.randint(1, 20))) for _ in range(count)])
    for names, (expected, hashed) in zip(lines, ask(oracle, lines), strict=True):
        assert map_order(names) == expected, names
        assert std_hash(" ".join(names).encode()) == hashed

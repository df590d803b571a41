from dataclasses import dataclass

from tritonclient.grpc import service_pb2

from gateway.balancing.affinity import backend_for_sequence, weight
from gateway.routing.wire import read_sequence_id


@dataclass(frozen=True)
class Backend:
    name: str


def test_a_sequence_always_gets_the_same_backend() -> None:
    backends = [Backend("a"), Backend("b"), Backend("c")]
    for sequence in ("1", "42", "user-7"):
        chosen = {backend_for_sequence(sequence, backends) for _ in range(20)}
        assert len(chosen) == 1


def test_sequences_spread_and_only_the_leavers_sequences_move() -> None:
    backends = [Backend("a"), Backend("b"), Backend("c")]
    before = {str(i): backend_for_sequence(str(i), backends) for i in range(300)}
    assert {b.name for b in before.values()} == {"a", "b", "c"}
    after = {str(i): backend_for_sequence(str(i), backends[:2]) for i in range(300)}
    moved = [s for s in before if before[s] != after[s]]
    assert all(before[s].name == "c" for s in moved)


def _request(**parameters: object) -> bytes:
    request = service_pb2.ModelInferRequest(model_name="m")
    for key, value in parameters.items():
        if isinstance(value, str):
            request.parameters[key].string_param = value
        else:
            request.parameters[key].int64_param = int(value)  # type: ignore[call-overload]
    return request.SerializeToString()


def test_sequence_id_is_read_from_int_and_string_parameters() -> None:
    assert read_sequence_id(_request(sequence_id=1234, sequence_start=1)) == "1234"
    assert read_sequence_id(_request(sequence_id="session-9")) == "session-9"
    assert read_sequence_id(_request(priority=3)) is None
    assert read_sequence_id(_request(sequence_id=0)) is None
    assert read_sequence_id(_request()) is None


def test_weight_is_fnv1a_64_as_tgw_edge_computes_it() -> None:
    # The same vector is checked in edge/src/routes.rs.
    assert weight("42", "triton-0") == 0x05E8EB9AD641B8D6

from tritonclient.grpc import service_pb2

from gateway.aggregation import merge_model_statistics, merge_repository_index

Index = service_pb2.RepositoryIndexResponse


def _stats(count: int, last: int, batch_size: int = 1) -> service_pb2.ModelStatisticsResponse:
    response = service_pb2.ModelStatisticsResponse()
    stats = response.model_stats.add(name="simple", version="1")
    stats.inference_count = count
    stats.execution_count = count
    stats.last_inference = last
    stats.inference_stats.success.count = count
    stats.inference_stats.success.ns = count * 1000
    batch = stats.batch_stats.add(batch_size=batch_size)
    batch.compute_infer.count = count
    return response


def test_statistics_sum_counts_and_keep_the_latest_timestamp() -> None:
    merged = merge_model_statistics([_stats(3, 100), _stats(4, 250)])
    (stats,) = merged.model_stats
    assert (stats.name, stats.version) == ("simple", "1")
    assert stats.inference_count == 7
    assert stats.execution_count == 7
    assert stats.last_inference == 250
    assert stats.inference_stats.success.count == 7
    assert stats.inference_stats.success.ns == 7000


def test_batch_statistics_merge_by_batch_size() -> None:
    merged = merge_model_statistics([_stats(3, 1, batch_size=1), _stats(4, 1, batch_size=1)])
    assert [(b.batch_size, b.compute_infer.count) for b in merged.model_stats[0].batch_stats] == [
        (1, 7)
    ]
    merged = merge_model_statistics([_stats(3, 1, batch_size=1), _stats(4, 1, batch_size=2)])
    assert sorted(b.batch_size for b in merged.model_stats[0].batch_stats) == [1, 2]


def test_index_is_the_union_and_ready_wins() -> None:
    first = Index(
        models=[
            Index.ModelIndex(name="classifier", version="1", state="UNAVAILABLE"),
            Index.ModelIndex(name="simple", version="1", state="READY"),
        ]
    )
    second = Index(
        models=[
            Index.ModelIndex(name="classifier", version="1", state="READY"),
            Index.ModelIndex(name="classifier", version="2", state="READY"),
        ]
    )
    merged = merge_repository_index([first, second])
    assert [(m.name, m.version, m.state) for m in merged.models] == [
        ("classifier", "1", "READY"),
        ("classifier", "2", "READY"),
        ("simple", "1", "READY"),
    ]


def test_index_drops_the_bare_entry_of_a_model_loaded_elsewhere() -> None:
    unloaded_here = Index(models=[Index.ModelIndex(name="classifier")])
    loaded_there = Index(models=[Index.ModelIndex(name="classifier", version="1", state="READY")])
    merged = merge_repository_index([unloaded_here, loaded_there])
    assert [(m.name, m.version) for m in merged.models] == [("classifier", "1")]
    alone = merge_repository_index([unloaded_here])
    assert [(m.name, m.version) for m in alone.models] == [("classifier", "")]


def test_empty_statistics_stay_present_as_triton_sends_them() -> None:
    """A model never called: Triton sends ``fail {}``, ``cache_hit {}``... present though
    empty, and a client comparing answers (or checking ``HasField``) sees them."""
    response = service_pb2.ModelStatisticsResponse()
    stats = response.model_stats.add(name="strings", version="1")
    stats.inference_stats.fail.SetInParent()
    stats.inference_stats.cache_hit.SetInParent()
    merged = merge_model_statistics([response, response])
    assert merged.model_stats[0].inference_stats.HasField("fail")
    assert merged.model_stats[0].inference_stats.HasField("cache_hit")
    assert merged == merge_model_statistics([response])
    assert merged.model_stats[0] == stats

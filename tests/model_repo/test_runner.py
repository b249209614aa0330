from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from batchserve.model_repo.errors import ModelLoadError
from batchserve.model_repo.runner import CPU_RUN_SIZE, OVERLAPPING_RUN_SIZE, Runner, RunnerConfig
from batchserve.model_repo.topk import softmax, top_k

SAMPLE = (3, 224, 224)


def batch_of(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *SAMPLE), dtype=np.float32)


@pytest.fixture(scope="module")
def runner(tiny_classifier) -> Runner:
    with Runner(tiny_classifier.path) as r:
        yield r


# --- loading ---------------------------------------------------------------------------------


def test_graph_facts(runner: Runner) -> None:
    assert runner.input_shape == ["batch", 3, 224, 224]
    assert runner.sample_shape == SAMPLE
    assert runner.num_classes == 1000


def test_this_machine_runs_on_cpu(runner: Runner) -> None:
    # The default asks for CUDA first; a CPU-only build falls back without complaint.
    assert runner.providers == ["CPUExecutionProvider"]


def test_session_logs_its_providers(tiny_classifier, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="batchserve.runner"):
        Runner(tiny_classifier.path, RunnerConfig(execution_providers=("CPUExecutionProvider",))).close()
    assert any("CPUExecutionProvider" in r.getMessage() for r in caplog.records)


def test_missing_model_file_says_how_to_build_it(tmp_path: Path) -> None:
    path = tmp_path / "efficientnet_lite0" / "1" / "model.onnx"
    with pytest.raises(ModelLoadError) as info:
        Runner(path)
    assert str(path) in str(info.value)
    assert "batchserve models build efficientnet_lite0" in str(info.value)


@pytest.mark.parametrize("content", [b"", b"this is not a protobuf", b"\x08\x07\x12\x03abc" * 50])
def test_corrupt_model_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "tiny" / "1" / "model.onnx"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match="cannot load model file"):
        Runner(path)


def test_truncated_model_file(tmp_path: Path, tiny_classifier) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(tiny_classifier.path.read_bytes()[:-100])
    with pytest.raises(ModelLoadError):
        Runner(path)


def test_a_directory_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        Runner(tmp_path)


def test_wrong_tensor_names(tmp_path: Path, make_classifier) -> None:
    model = make_classifier(tmp_path / "m.onnx", input_name="images", output_name="scores")
    with pytest.raises(ModelLoadError, match="'images'"):
        Runner(model.path)
    with Runner(model.path, input_name="images", output_name="scores") as r:
        assert r.infer(batch_of(2)).shape == (2, 1000)


def test_symbolic_class_count_is_probed(tmp_path: Path, make_classifier) -> None:
    model = make_classifier(tmp_path / "m.onnx", classes="classes")
    with Runner(model.path) as r:
        assert r.num_classes == 10


def test_fixed_batch_graph_is_padded(tmp_path: Path, make_classifier) -> None:
    model = make_classifier(tmp_path / "m.onnx", batch=4)
    with Runner(model.path) as r:
        assert r.fixed_batch == 4
        r.warmup(4)
        batch = batch_of(3)
        rows = r.infer_samples(list(batch))
        assert len(rows) == 3
        np.testing.assert_allclose(np.stack(rows), model.reference(batch), rtol=1e-4, atol=1e-4)
        with pytest.raises(ValueError, match="at most 4"):
            r.infer_samples(list(batch_of(5)))
        with pytest.raises(ValueError, match="exactly 4"):
            r.infer(batch_of(2))
        with pytest.raises(ModelLoadError, match="fixed batch size of 4"):
            r.warmup(8)


def test_unknown_provider_in_config(tiny_classifier) -> None:
    with pytest.raises(ValueError, match="known"):
        Runner(tiny_classifier.path, RunnerConfig(execution_providers=("GPU",)))


# --- inference -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 4])
def test_infer_shapes_and_values(runner: Runner, tiny_classifier, n: int) -> None:
    batch = batch_of(n, seed=n)
    logits = runner.infer(batch)
    assert logits.shape == (n, 1000) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, tiny_classifier.reference(batch), rtol=1e-4, atol=1e-4)


def test_infer_samples_equals_infer_on_the_stacked_batch(runner: Runner) -> None:
    batch = batch_of(5, seed=7)
    rows = runner.infer_samples(list(batch))
    assert len(rows) == 5 and all(r.shape == (1000,) for r in rows)
    np.testing.assert_array_equal(np.stack(rows), runner.infer(batch))


def test_infer_samples_reuses_its_buffer_safely(runner: Runner) -> None:
    # A later, smaller batch must not see rows of the earlier one, nor change its results.
    big, small = batch_of(6, seed=1), batch_of(2, seed=2)
    first = [r.copy() for r in runner.infer_samples(list(big))]
    second = runner.infer_samples(list(small))
    np.testing.assert_array_equal(np.stack(second), runner.infer(small))
    np.testing.assert_array_equal(np.stack(first), runner.infer(big))


def test_concurrent_batches_do_not_mix(runner: Runner) -> None:
    # Up to 12 samples: some batches are cut into runs of CPU_RUN_SIZE.
    batches = [batch_of(1 + i % 12, seed=i) for i in range(24)]
    expected = [np.stack(runner.infer_samples(list(b))) for b in batches]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda b: np.stack(runner.infer_samples(list(b))), batches))
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def _run_sizes(runner: Runner) -> list[int]:
    """Record the batch size of every ONNX Runtime run the runner makes from now on."""
    sizes: list[int] = []
    infer = runner._infer

    def recording(batch: np.ndarray, *, overlapping: bool) -> np.ndarray:
        sizes.append(batch.shape[0])
        return infer(batch, overlapping=overlapping)

    runner._infer = recording  # type: ignore[method-assign]
    return sizes


def test_a_cpu_session_runs_large_batches_in_runs_of_cpu_run_size(runner: Runner, tiny_classifier) -> None:
    assert runner.run_size == CPU_RUN_SIZE
    with Runner(tiny_classifier.path, RunnerConfig(run_size=3)) as r:
        batch = batch_of(7, seed=3)
        sizes = _run_sizes(r)
        rows = r.infer_samples(list(batch))
        assert sizes == [3, 3, 1]
        assert len(rows) == 7 and all(row.shape == (1000,) for row in rows)
        np.testing.assert_allclose(np.stack(rows), tiny_classifier.reference(batch), rtol=1e-4, atol=1e-4)
        sizes.clear()
        r.infer_samples(list(batch[:3]))
        assert sizes == [3]  # a batch within run_size is one run


def test_a_fixed_batch_graph_is_never_cut(tmp_path: Path, make_classifier) -> None:
    model = make_classifier(tmp_path / "m.onnx", batch=4)
    with Runner(model.path, RunnerConfig(run_size=2)) as r:
        sizes = _run_sizes(r)
        rows = r.infer_samples(list(batch_of(3)))
        assert sizes == [4] and len(rows) == 3


def test_run_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="run_size must be at least 1"):
        RunnerConfig(run_size=0)


def test_conv_graph_runs_on_real_preprocessed_shapes(conv_classifier: Path) -> None:
    with Runner(conv_classifier) as r:
        logits = r.infer_samples(list(batch_of(3)))
        assert len(logits) == 3 and np.isfinite(np.stack(logits)).all()


def test_empty_sample_list(runner: Runner) -> None:
    assert runner.infer_samples([]) == []


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((2, 3, 224, 224), dtype=np.float64),
        np.zeros((3, 224, 224), dtype=np.float32),
        np.zeros((2, 3, 200, 224), dtype=np.float32),
        np.zeros((0, 3, 224, 224), dtype=np.float32),
        [[0.0]],
    ],
)
def test_infer_rejects_wrong_input(runner: Runner, bad) -> None:
    with pytest.raises(ValueError, match="batch must"):
        runner.infer(bad)


def test_infer_samples_rejects_a_wrong_sample(runner: Runner) -> None:
    with pytest.raises(ValueError, match="sample 1"):
        runner.infer_samples([np.zeros(SAMPLE, np.float32), np.zeros((3, 224, 223), np.float32)])


def test_warmup_and_close(tiny_classifier) -> None:
    r = Runner(tiny_classifier.path, RunnerConfig(intra_op_threads=1))
    r.warmup(8)
    r.warmup(1)
    with pytest.raises(ValueError):
        r.warmup(0)
    r.close()
    with pytest.raises(RuntimeError, match="closed"):
        r.infer(batch_of(1))


# --- softmax and top-k ---------------------------------------------------------------------------


def test_softmax_is_stable_and_keeps_dtype() -> None:
    big = np.array([1000.0, 1001.0, 1002.0], dtype=np.float32)
    probs = softmax(big)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, softmax(np.array([0.0, 1.0, 2.0])), rtol=1e-6)
    assert softmax(np.array([-1e30, 0.0], dtype=np.float64)).tolist() == [0.0, 1.0]
    assert softmax(np.array([1, 2, 3])).dtype == np.float64


def test_softmax_rows() -> None:
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    probs = softmax(logits)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0)
    np.testing.assert_allclose(probs[1], 1 / 3)


@pytest.mark.parametrize("bad", [np.array([np.nan, 1.0]), np.array([np.inf, 1.0]), np.array([])])
def test_softmax_rejects_broken_logits(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        softmax(bad)


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.float32, st.integers(1, 50), elements=st.floats(-50, 50, width=32)))
def test_softmax_is_a_distribution(logits: np.ndarray) -> None:
    probs = softmax(logits)
    assert np.all(probs >= 0) and abs(float(probs.sum()) - 1.0) < 1e-5
    assert probs[int(np.argmax(logits))] == probs.max()  # order-preserving (ties may merge)


def test_top_k_orders_by_score_then_class_id() -> None:
    row = np.array([0.1, 0.3, 0.05, 0.3, 0.25])
    assert top_k(row, 3) == [(1, 0.3), (3, 0.3), (4, 0.25)]
    assert [c for c, _ in top_k(row, 5)] == [1, 3, 4, 0, 2]


def test_top_k_ties_at_the_cut_prefer_lower_class_ids() -> None:
    row = np.array([0.2, 0.1, 0.2, 0.2, 0.3])
    assert top_k(row, 2) == [(4, 0.3), (0, 0.2)]
    assert top_k(np.zeros(1000), 3) == [(0, 0.0), (1, 0.0), (2, 0.0)]


@pytest.mark.parametrize("k", [0, 6, -1])
def test_top_k_rejects_bad_k(k: int) -> None:
    with pytest.raises(ValueError, match="between 1 and 5"):
        top_k(np.arange(5.0), k)


def test_top_k_rejects_bad_rows() -> None:
    with pytest.raises(ValueError):
        top_k(np.zeros((2, 3)), 1)
    with pytest.raises(ValueError):
        top_k(np.array([np.nan, 1.0]), 1)


@settings(max_examples=300, deadline=None)
@given(
    hnp.arrays(np.float64, st.integers(1, 40), elements=st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 1.0])),
    st.data(),
)
def test_top_k_matches_a_full_sort(row: np.ndarray, data: st.DataObject) -> None:
    k = data.draw(st.integers(1, row.size))
    expected = sorted(((i, float(v)) for i, v in enumerate(row)), key=lambda p: (-p[1], p[0]))[:k]
    assert top_k(row, k) == expected


def test_top_k_on_real_runner_output(runner: Runner) -> None:
    logits = runner.infer_samples(list(batch_of(2)))
    for row in logits:
        best = top_k(softmax(row), 5)
        assert len(best) == 5 and best[0][0] == int(np.argmax(row))
        assert all(a[1] >= b[1] for a, b in zip(best, best[1:], strict=False))


# --- overlapping batches on a CPU ----------------------------------------------------------


def test_a_multi_threaded_cpu_runner_keeps_a_single_threaded_session_for_overlapping_batches(tiny_classifier) -> None:
    with Runner(tiny_classifier.path, RunnerConfig(intra_op_threads=2, single_threaded_when_overlapping=True)) as r:
        assert r.overlapping_single_threaded
    # Nothing to gain when every run is single-threaded already; not asked (batches never overlap).
    with Runner(tiny_classifier.path, RunnerConfig(intra_op_threads=1, single_threaded_when_overlapping=True)) as r:
        assert not r.overlapping_single_threaded
    with Runner(tiny_classifier.path, RunnerConfig(intra_op_threads=2)) as r:
        assert not r.overlapping_single_threaded


def test_runs_made_while_another_batch_runs_are_single_threaded(tiny_classifier) -> None:
    """A batch that starts alone uses every thread; a batch that enters while it runs, and the
    first batch's next run, use the single-threaded session; each answers what it answers alone."""
    config = RunnerConfig(intra_op_threads=2, run_size=2, single_threaded_when_overlapping=True)
    with Runner(tiny_classifier.path, config) as r:
        first, second = batch_of(6, seed=1), batch_of(2, seed=2)
        want_first, want_second = np.stack(r.infer_samples(list(first))), np.stack(r.infer_samples(list(second)))
        infer = r._infer
        runs: list[tuple[str, bool]] = []
        first_running, second_inside, first_ran_again = threading.Event(), threading.Event(), threading.Event()

        def recording(batch: np.ndarray, *, overlapping: bool) -> np.ndarray:
            who = threading.current_thread().name.split("_")[0]
            runs.append((who, overlapping))
            if who == "first" and len(runs) == 1:
                first_running.set()
                assert second_inside.wait(10)
            elif who == "first" and len(runs) == 3:
                first_ran_again.set()
            elif who == "second":
                second_inside.set()
                assert first_ran_again.wait(10)  # still inside while the first batch makes its next run
            return infer(batch, overlapping=overlapping)

        r._infer = recording  # type: ignore[method-assign]
        with ThreadPoolExecutor(1, thread_name_prefix="first") as a, \
                ThreadPoolExecutor(1, thread_name_prefix="second") as b:
            got_first = a.submit(r.infer_samples, list(first))
            assert first_running.wait(10)
            got_second = b.submit(r.infer_samples, list(second))
            np.testing.assert_allclose(np.stack(got_first.result(10)), want_first, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(np.stack(got_second.result(10)), want_second, rtol=1e-5, atol=1e-5)
        assert runs[:3] == [("first", False), ("second", True), ("first", True)]
        assert len(runs) == 4  # 3 runs of 2 and 1
        runs.clear()
        r.infer_samples(list(second))
        assert runs == [("MainThread", False)]  # alone again: every thread


def test_runs_beside_another_batch_are_cut_smaller(tiny_classifier) -> None:
    """Two single-threaded runs at once hold two runs' activations: each takes at most
    OVERLAPPING_RUN_SIZE samples, and answers the same."""
    config = RunnerConfig(intra_op_threads=2, single_threaded_when_overlapping=True)
    with Runner(tiny_classifier.path, config) as r:
        sizes = _run_sizes(r)
        batch = batch_of(CPU_RUN_SIZE + 1, seed=5)
        alone = np.stack(r.infer_samples(list(batch)))
        assert sizes == [CPU_RUN_SIZE, 1]
        sizes.clear()
        with r._running():  # another batch is in the runner meanwhile
            beside = np.stack(r.infer_samples(list(batch)))
        assert sizes == [OVERLAPPING_RUN_SIZE, OVERLAPPING_RUN_SIZE, 1]
        np.testing.assert_allclose(beside, alone, rtol=1e-5, atol=1e-5)


def test_without_a_shared_arena_a_runner_keeps_one_session(tiny_classifier, monkeypatch, caplog) -> None:
    """A second session with an arena of its own would cost more memory than it is worth: where ONNX
    Runtime cannot make the shared arena, overlapping batches share the one session's threads."""
    from batchserve.model_repo import runner as runner_module

    def refuse(*args: object) -> None:
        raise RuntimeError("no environment allocators in this build")

    monkeypatch.setattr(runner_module, "_shared_arena_registered", False)
    monkeypatch.setattr(runner_module.ort, "create_and_register_allocator", refuse)
    config = RunnerConfig(intra_op_threads=2, single_threaded_when_overlapping=True)
    with caplog.at_level(logging.WARNING, logger="batchserve.runner"), Runner(tiny_classifier.path, config) as r:
        assert not r.overlapping_single_threaded
        with r._running():
            assert len(r.infer_samples(list(batch_of(5)))) == 5
    assert any("no shared CPU arena" in record.getMessage() for record in caplog.records)

"""Backend selection and the finite-difference helpers themselves."""
import numpy as np
import pytest

from minnst import backend, gradcheck


def test_get_xp_is_numpy_for_host_data():
    assert backend.get_xp(np.zeros(2)) is np
    assert backend.get_xp(np.zeros(2), 3.0) is np


def test_cpu_is_always_available(monkeypatch):
    monkeypatch.delenv("MINNST_DEVICE", raising=False)
    assert backend.select_device("cpu").name == "cpu"
    assert backend.select_device("cpu").xp is np


def test_unknown_device_is_a_one_line_error():
    with pytest.raises(backend.DeviceError) as e:
        backend.select_device("tpu")
    assert "\n" not in str(e.value)


def test_gpu_request_without_working_gpu_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(backend, "gpu_available", lambda: (False, "CuPy sees no CUDA device"))
    with pytest.raises(backend.DeviceError) as e:
        backend.select_device("gpu")
    assert "no CUDA device" in str(e.value) and "\n" not in str(e.value)
    assert backend.select_device("auto").name == "cpu"  # auto falls back quietly


def test_environment_variable_chooses_the_default(monkeypatch):
    monkeypatch.setattr(backend, "gpu_available", lambda: (False, "none"))
    monkeypatch.setenv("MINNST_DEVICE", "gpu")
    with pytest.raises(backend.DeviceError):
        backend.select_device(None)
    monkeypatch.setenv("MINNST_DEVICE", "cpu")
    assert backend.select_device(None).name == "cpu"


def test_default_device_name_reads_the_environment(monkeypatch):
    monkeypatch.delenv("MINNST_DEVICE", raising=False)
    assert backend.default_device_name() == "auto"
    monkeypatch.setenv("MINNST_DEVICE", " CPU ")
    assert backend.default_device_name() == "cpu"
    assert backend.select_device(None).name == "cpu"
    assert backend.select_device("cpu").name == "cpu"  # a named device wins


def test_keep_freed_memory_says_whether_it_could():
    """Run in a child process: it tunes the allocator of the whole process."""
    import subprocess
    import sys

    code = "from minnst import backend; print(backend.keep_freed_memory())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() in ("True", "False")


def test_gpu_available_reports_a_reason_here():
    ok, why = backend.gpu_available()
    assert ok or (why and "\n" not in why)


def test_importing_minnst_does_not_import_cupy():
    import subprocess
    import sys

    code = "import sys, minnst, minnst.vgg, minnst.losses, minnst.layers; print('cupy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_numerical_gradient_of_a_known_function():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4))
    A = rng.standard_normal((4, 4))
    f = lambda z: float(np.sum(np.sin(z) @ A))  # noqa: E731
    analytic = np.cos(x) * A.sum(axis=1)[None, :]
    num = gradcheck.eval_numerical_gradient(f, x)
    assert gradcheck.rel_error(num, analytic) < 1e-8
    assert gradcheck.grad_check_sparse(f, x, analytic, num_checks=5) < 1e-8
    err, _, _ = gradcheck.directional_check(f, x, analytic)
    assert err < 1e-8
    # and it notices a wrong gradient
    assert gradcheck.directional_check(f, x, analytic * 1.01)[0] > 1e-3


def test_numerical_gradient_does_not_modify_its_input():
    x = np.arange(6.0).reshape(2, 3)
    before = x.copy()
    gradcheck.eval_numerical_gradient_array(lambda z: z * 2, x, np.ones_like(x))
    assert np.array_equal(x, before)


def test_rel_error_definition():
    assert gradcheck.rel_error(1.0, 1.0) == 0.0
    assert gradcheck.rel_error(np.array([1.0, 3.0]), np.array([1.0, 1.0])) == pytest.approx(0.5)
    assert gradcheck.rel_error(0.0, 1e-12) == pytest.approx(1e-4)  # the 1e-8 floor

import pytest

from rmeeto_export.errors import UserError
from rmeeto_export.trt.targets import check_precision_supported, parse_compute_capability, sm_name


@pytest.mark.parametrize(
    "text, expected",
    [("sm89", (8, 9)), ("SM86", (8, 6)), ("sm_120", (12, 0)), ("8.9", (8, 9)), ("12.0", (12, 0)), ("75", (7, 5))],
)
def test_compute_capability_spellings(text, expected):
    assert parse_compute_capability(text) == expected
    assert parse_compute_capability(sm_name(expected)) == expected


@pytest.mark.parametrize("text", ["", "ampere", "sm", "8", "sm8.9x"])
def test_bad_compute_capability_is_a_user_error(text):
    with pytest.raises(UserError, match="not understood"):
        parse_compute_capability(text)


@pytest.mark.parametrize("precision, cc", [("int8", (7, 0)), ("fp16", (6, 1))])
def test_precision_the_target_cannot_run(precision, cc):
    with pytest.raises(UserError, match=f"precision {precision} needs compute capability"):
        check_precision_supported(precision, cc)


@pytest.mark.parametrize("precision, cc", [("int8", (7, 5)), ("fp16", (7, 0)), ("fp32", (7, 5))])
def test_precision_the_target_runs(precision, cc):
    check_precision_supported(precision, cc)


def test_unknown_precision():
    with pytest.raises(UserError, match="unknown precision 'fp64'"):
        check_precision_supported("fp64", (8, 9))

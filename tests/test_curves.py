"""Tests of curves.py: the moving average, subsampling and a run's smoothed curve."""

import numpy as np
import pytest

import curves

# --- moving average and subsampling ---------------------------------------------------------


def test_moving_average_1d_hand_computed():
    x = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    np.testing.assert_allclose(curves.moving_average(x, 2), [1.5, 3.0, 6.0, 12.0])
    np.testing.assert_allclose(curves.moving_average(x, 3), [7 / 3, 14 / 3, 28 / 3])
    np.testing.assert_allclose(curves.moving_average(x, 1), x)
    np.testing.assert_allclose(curves.moving_average(x, 5), [31 / 5])
    assert curves.moving_average(x, 4).shape == (5 - 4 + 1,)


def test_moving_average_2d_smooths_each_column_along_axis_0():
    x = np.array([[1.0, 10.0], [2.0, 30.0], [3.0, 20.0], [6.0, 0.0]])
    out = curves.moving_average(x, 3)
    np.testing.assert_allclose(out, [[2.0, 20.0], [11 / 3, 50 / 3]])
    assert out.shape == (4 - 3 + 1, 2)
    np.testing.assert_allclose(curves.moving_average(x, 2), [[1.5, 20], [2.5, 25], [4.5, 10]])


def test_moving_average_rejects_bad_windows():
    with pytest.raises(curves.CurveError, match="larger than the number of points"):
        curves.moving_average(np.arange(3.0), 4)
    with pytest.raises(curves.CurveError, match=">= 1"):
        curves.moving_average(np.arange(3.0), 0)


def test_subsample_keeps_every_fth_evaluation_from_the_first():
    x = np.arange(10)
    np.testing.assert_array_equal(curves.subsample(x, 1), x)
    np.testing.assert_array_equal(curves.subsample(x, 3), [0, 3, 6, 9])
    np.testing.assert_array_equal(curves.subsample(x, 4), [0, 4, 8])
    two_d = np.arange(20).reshape(10, 2)
    np.testing.assert_array_equal(curves.subsample(two_d, 5), [[0, 1], [10, 11]])


def test_curve_subsamples_then_smooths_times_and_values_alike():
    times = np.arange(10) * 500.0
    values = np.stack([np.arange(10.0), 2 * np.arange(10.0)], axis=1)
    t, mean, low, high = curves.curve(times, values, window=2, frequency=3)
    # kept evaluations 0, 3, 6, 9 -> smoothed with width 2 -> 3 points
    np.testing.assert_allclose(t, [750.0, 2250.0, 3750.0])
    np.testing.assert_allclose(mean, 1.5 * np.array([1.5, 4.5, 7.5]))
    assert np.all(low <= mean) and np.all(mean <= high)

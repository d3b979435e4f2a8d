"""1-D Kalman smoothing of a daily series (a local-level model).

The state is the true proportion, which drifts as a random walk with variance
``transition_covariance`` per day; each photo observes it with noise of variance
``observation_covariance``. The original smoothed every class curve this way with
``pykalman`` (transition 0.1, observation 1, initial state = the first observation,
initial variance = the observation variance). ``kalman_smooth`` does the same with
``pykalman`` and :func:`rts_smooth` is a NumPy Rauch-Tung-Striebel smoother of the
same model, used as a cross-check and as a fallback when pykalman is missing.

NaN entries are missing days: the filter skips their update, so gaps in the photo
record are bridged instead of squeezed out of the time axis.
"""
import numpy as np

TRANSITION_COVARIANCE = 0.1
OBSERVATION_COVARIANCE = 1.0


def _as_series(series):
    x = np.asarray(series, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("cannot smooth an empty series")
    if np.isnan(x[0]):
        raise ValueError("the first value of the series must be observed (it is the initial state)")
    return x


def rts_smooth(series, transition_covariance=TRANSITION_COVARIANCE,
               observation_covariance=OBSERVATION_COVARIANCE):
    """Smoothed means of a 1-D series, in NumPy; NaN marks a missing day. Returns [n]."""
    y = _as_series(series)
    q, r = float(transition_covariance), float(observation_covariance)
    n = y.size
    m_pred, p_pred = np.empty(n), np.empty(n)
    m_filt, p_filt = np.empty(n), np.empty(n)
    m, p = y[0], r              # the original's prior: first observation, observation variance
    for t in range(n):
        if t > 0:
            p = p + q           # random walk: the mean carries over, the variance grows
        m_pred[t], p_pred[t] = m, p
        if not np.isnan(y[t]):
            k = p / (p + r)
            m = m + k * (y[t] - m)
            p = (1.0 - k) * p
        m_filt[t], p_filt[t] = m, p
    m_s = m_filt.copy()
    p_s = p_filt.copy()
    for t in range(n - 2, -1, -1):
        j = p_filt[t] / p_pred[t + 1]
        m_s[t] = m_filt[t] + j * (m_s[t + 1] - m_pred[t + 1])
        p_s[t] = p_filt[t] + j * j * (p_s[t + 1] - p_pred[t + 1])
    return m_s


def kalman_smooth(series, transition_covariance=TRANSITION_COVARIANCE,
                  observation_covariance=OBSERVATION_COVARIANCE, backend="pykalman"):
    """Smoothed means of a 1-D series as the original's ``Kalman1D``; returns [n].

    ``backend`` is ``"pykalman"`` (the original's library) or ``"numpy"``
    (:func:`rts_smooth`); NaN marks a missing day in both.
    """
    y = _as_series(series)
    if backend == "numpy":
        return rts_smooth(y, transition_covariance, observation_covariance)
    if backend != "pykalman":
        raise ValueError(f"unknown smoothing backend {backend!r}; choose pykalman or numpy")
    from pykalman import KalmanFilter

    kf = KalmanFilter(initial_state_mean=y[0],
                      initial_state_covariance=observation_covariance,
                      observation_covariance=observation_covariance,
                      transition_covariance=transition_covariance,
                      transition_matrices=1)
    means, _ = kf.smooth(np.ma.masked_invalid(y))
    return np.asarray(means, dtype=np.float64).reshape(-1)


def Kalman1D(observations, damping=1):
    """The original's name and signature: ``damping`` is the observation variance."""
    return kalman_smooth(observations, TRANSITION_COVARIANCE, damping)

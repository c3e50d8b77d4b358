"""ComfyUI's k-diffusion samplers, on sigmas, for the sampler/schedule pairs diffusers has no scheduler for.

Every sampler is ``fn(denoise, x, sigmas, noise, callback) -> x`` where ``denoise(x, sigma)`` returns the
guided x0 prediction at noise level ``sigma`` (VE convention: ``x = x0 + sigma * eps``), ``sigmas`` is the
descending schedule (usually ending at 0), ``noise()`` draws a standard normal tensor shaped like ``x`` and
``callback(i, denoised)`` reports each step. The algorithms are k-diffusion's as ComfyUI ships them
(comfy/k_diffusion/sampling.py), with the default settings ComfyUI's KSampler uses (eta 1, s_noise 1,
no churn). One difference: the SDE samplers (dpmpp_sde, dpmpp_2m_sde, dpmpp_3m_sde) draw their noise from
``noise()`` (independent Gaussians) where ComfyUI uses a torchsde Brownian tree; the algorithm is the same,
the random numbers are not.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def to_d(x, sigma, denoised):
    return (x - denoised) / sigma


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up): where to step deterministically and how much fresh noise to add back."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    return (sigma_to ** 2 - sigma_up ** 2) ** 0.5, sigma_up


def _steps(sigmas):
    s = [float(v) for v in sigmas]
    return [(i, s[i], s[i + 1]) for i in range(len(s) - 1)]


def euler(denoise, x, sigmas, noise, callback):
    for i, s, s_next in _steps(sigmas):
        denoised = denoise(x, s)
        callback(i, denoised)
        x = x + to_d(x, s, denoised) * (s_next - s)
    return x


def euler_ancestral(denoise, x, sigmas, noise, callback):
    for i, s, s_next in _steps(sigmas):
        denoised = denoise(x, s)
        callback(i, denoised)
        down, up = ancestral_step(s, s_next)
        if down == 0:
            x = denoised
        else:
            x = x + to_d(x, s, denoised) * (down - s) + noise() * up
    return x


def heun(denoise, x, sigmas, noise, callback):
    for i, s, s_next in _steps(sigmas):
        denoised = denoise(x, s)
        callback(i, denoised)
        d = to_d(x, s, denoised)
        dt = s_next - s
        if s_next == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, s_next, denoise(x_2, s_next))
            x = x + (d + d_2) / 2 * dt
    return x


def _log_mid(a: float, b: float) -> float:
    return math.exp((math.log(a) + math.log(b)) / 2)


def dpm_2(denoise, x, sigmas, noise, callback):
    for i, s, s_next in _steps(sigmas):
        denoised = denoise(x, s)
        callback(i, denoised)
        d = to_d(x, s, denoised)
        if s_next == 0:
            x = x + d * (s_next - s)
        else:
            mid = _log_mid(s, s_next)
            x_2 = x + d * (mid - s)
            x = x + to_d(x_2, mid, denoise(x_2, mid)) * (s_next - s)
    return x


def dpm_2_ancestral(denoise, x, sigmas, noise, callback):
    for i, s, s_next in _steps(sigmas):
        denoised = denoise(x, s)
        callback(i, denoised)
        down, up = ancestral_step(s, s_next)
        d = to_d(x, s, denoised)
        if down == 0:
            x = x + d * (down - s)
        else:
            mid = _log_mid(s, down)
            x_2 = x + d * (mid - s)
            x = x + to_d(x_2, mid, denoise(x_2, mid)) * (down - s)
            x = x + noise() * up
    return x


def _lms_coefficient(order: int, t: list[float], i: int, j: int) -> float:
    """Integral over [t_i, t_{i+1}] of the Lagrange basis polynomial j through t_i, t_{i-1}, ... (Gauss-Legendre,
    exact for these polynomial degrees; k-diffusion uses scipy's quad)."""
    nodes, weights = np.polynomial.legendre.leggauss(8)
    a, b = t[i], t[i + 1]
    taus = (b - a) / 2 * nodes + (a + b) / 2
    values = np.ones_like(taus)
    for k in range(order):
        if j != k:
            values *= (taus - t[i - k]) / (t[i - j] - t[i - k])
    return float((b - a) / 2 * np.sum(weights * values))


def lms(denoise, x, sigmas, noise, callback, order: int = 4):
    t = [float(v) for v in sigmas]
    ds = []
    for i, s, _ in _steps(sigmas):
        denoised = denoise(x, s)
        callback(i, denoised)
        ds.append(to_d(x, s, denoised))
        if len(ds) > order:
            ds.pop(0)
        cur = min(i + 1, order)
        coeffs = [_lms_coefficient(cur, t, i, j) for j in range(cur)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(ds), strict=True))
    return x


def dpmpp_2s_ancestral(denoise, x, sigmas, noise, callback):
    for i, s, s_next in _steps(sigmas):
        denoised = denoise(x, s)
        callback(i, denoised)
        down, up = ancestral_step(s, s_next)
        if down == 0:
            x = x + to_d(x, s, denoised) * (down - s)
        else:
            t, t_next = -math.log(s), -math.log(down)
            h = t_next - t
            s_mid = t + h / 2
            x_2 = (math.exp(-s_mid) / s) * x - math.expm1(-h / 2) * denoised
            denoised_2 = denoise(x_2, math.exp(-s_mid))
            x = (down / s) * x - math.expm1(-h) * denoised_2
        if s_next > 0:
            x = x + noise() * up
    return x


def dpmpp_sde(denoise, x, sigmas, noise, callback, r: float = 0.5):
    for i, s, s_next in _steps(sigmas):
        denoised = denoise(x, s)
        callback(i, denoised)
        if s_next == 0:
            x = x + to_d(x, s, denoised) * (s_next - s)
            continue
        t, t_next = -math.log(s), -math.log(s_next)
        h = t_next - t
        s_mid = t + h * r
        fac = 1 / (2 * r)
        down, up = ancestral_step(s, math.exp(-s_mid))
        s_ = -math.log(down)
        x_2 = (down / s) * x - math.expm1(t - s_) * denoised
        x_2 = x_2 + noise() * up
        denoised_2 = denoise(x_2, math.exp(-s_mid))
        down, up = ancestral_step(s, s_next)
        t_next_ = -math.log(down)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (down / s) * x - math.expm1(t - t_next_) * denoised_d
        x = x + noise() * up
    return x


def dpmpp_2m(denoise, x, sigmas, noise, callback):
    old = None
    t = [float(v) for v in sigmas]
    for i, s, s_next in _steps(sigmas):
        denoised = denoise(x, s)
        callback(i, denoised)
        if s_next == 0:
            x = denoised  # the first-order step to sigma 0 (sigma_next / sigma = 0, expm1(-inf) = -1)
        else:
            h = math.log(s) - math.log(s_next)
            if old is None:
                x = (s_next / s) * x - math.expm1(-h) * denoised
            else:
                r = (math.log(t[i - 1]) - math.log(s)) / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
                x = (s_next / s) * x - math.expm1(-h) * d
        old = denoised
    return x


def dpmpp_2m_sde(denoise, x, sigmas, noise, callback, eta: float = 1.0):
    old, h_last = None, None
    for i, s, s_next in _steps(sigmas):
        denoised = denoise(x, s)
        callback(i, denoised)
        if s_next == 0:
            x = denoised
        else:
            h = math.log(s) - math.log(s_next)
            eta_h = eta * h
            x = (s_next / s) * math.exp(-eta_h) * x + (-math.expm1(-h - eta_h)) * denoised
            if old is not None:  # midpoint solver
                r = h_last / h
                x = x + 0.5 * (-math.expm1(-h - eta_h)) * (1 / r) * (denoised - old)
            x = x + noise() * s_next * math.sqrt(-math.expm1(-2 * eta_h))
            h_last = h
        old = denoised
    return x


def dpmpp_3m_sde(denoise, x, sigmas, noise, callback, eta: float = 1.0):
    d_1 = d_2 = None
    h_1 = h_2 = None
    for i, s, s_next in _steps(sigmas):
        denoised = denoise(x, s)
        callback(i, denoised)
        if s_next == 0:
            x = denoised
        else:
            h = math.log(s) - math.log(s_next)
            h_eta = h * (eta + 1)
            x = math.exp(-h_eta) * x + (-math.expm1(-h_eta)) * denoised
            phi_2 = math.expm1(-h_eta) / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - d_1) / r0
                d1_1 = (d_1 - d_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                x = x + phi_2 * (denoised - d_1) / (h_1 / h)
            x = x + noise() * s_next * math.sqrt(-math.expm1(-2 * h * eta))
            h_1, h_2 = h, h_1
            d_1, d_2 = denoised, d_1
    return x


def ddpm(denoise, x, sigmas, noise, callback):
    """Ancestral DDPM steps taken in VP space (x / sqrt(1 + sigma^2)), as ComfyUI's generic step sampler."""
    for i, s, s_next in _steps(sigmas):
        denoised = denoise(x, s)
        callback(i, denoised)
        eps = (x - denoised) / s
        x_vp = x / math.sqrt(1.0 + s * s)
        ac, ac_prev = 1 / (s * s + 1), 1 / (s_next * s_next + 1)
        alpha = ac / ac_prev
        mu = math.sqrt(1 / alpha) * (x_vp - (1 - alpha) * eps / math.sqrt(1 - ac))
        if s_next > 0:
            mu = mu + math.sqrt((1 - alpha) * (1 - ac_prev) / (1 - ac)) * noise()
            mu = mu * math.sqrt(1.0 + s_next * s_next)
        x = mu
    return x


def lcm(denoise, x, sigmas, noise, callback):
    for i, s, s_next in _steps(sigmas):
        denoised = denoise(x, s)
        callback(i, denoised)
        x = denoised
        if s_next > 0:
            x = x + noise() * s_next
    return x


SAMPLERS = {
    "euler": euler, "euler_ancestral": euler_ancestral, "heun": heun, "dpm_2": dpm_2,
    "dpm_2_ancestral": dpm_2_ancestral, "lms": lms, "dpmpp_2s_ancestral": dpmpp_2s_ancestral,
    "dpmpp_sde": dpmpp_sde, "dpmpp_2m": dpmpp_2m, "dpmpp_2m_sde": dpmpp_2m_sde, "dpmpp_3m_sde": dpmpp_3m_sde,
    "ddpm": ddpm, "lcm": lcm,
    "ddim": euler,  # ComfyUI's ddim is its euler sampler (on whatever sigmas it is given)
}


def noise_source(shape: tuple, seed: int, dtype=torch.float32):
    """ComfyUI's default noise sampler: a CPU generator seeded with ``seed + 1``, one ``randn`` per call."""
    generator = torch.Generator("cpu").manual_seed(int(seed) + 1)
    return lambda: torch.randn(shape, generator=generator, dtype=dtype)

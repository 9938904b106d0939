"""The methods' compositions of the Top-k pair, as efcomm.methods runs them: the targets with
torch ops (each one rounding), then topk_encode_ and own decodes."""

from efcomm import ops


def ef_step(g, e, k, threshold=None):
    """EF: p = g + e; the message of TopK(p); e = p - TopK(p)."""
    e.add_(g)
    message = ops.topk_encode_(e, None, k, threshold=threshold)
    ops.topk_decode_add_(e, message[None], k, scale=-1.0)
    return message


def ef21_sgdm_step(g, v, h_local, k, eta, threshold=None):
    """EF21-SGDM: v = lerp(v, g, eta); EF21's step on v."""
    v.lerp_(g, eta)
    return ops.topk_encode_(v, h_local, k, threshold=threshold)


def econtrol_step(g, e, h_local, k, eta, threshold=None):
    """EControl: p = (g - h) + eta e, e += g - h (each op one rounding); the message of
    TopK(p); e -= TopK(p); h += TopK(p)."""
    r = g - h_local
    p = r + eta * e
    e.add_(r)
    message = ops.topk_encode_(p, None, k, threshold=threshold)
    ops.topk_decode_add_(e, message[None], k, scale=-1.0)
    ops.topk_decode_add_(h_local, message[None], k)
    return message

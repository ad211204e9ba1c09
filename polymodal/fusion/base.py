"""The fusion interface: `FusionOutput`, the `FusionModule` base class and exact masked pooling helpers.

Every fusion module is built as ``Cls(dims, out_dim, **options)`` (``dims``: the per-modality input sizes D_i) and
called as ``module(inputs, masks=None) -> FusionOutput``:

- ``inputs``: one tensor per modality, in the order of ``dims``: tokens ``[B, T_i, D_i]`` or pooled ``[B, D_i]``
  (a pooled vector is treated as one token). Modalities may mix the two forms and have different T_i.
- ``masks``: ``None`` (every token real) or one entry per modality: ``None`` or ``[B, T_i]`` with True (or 1, as
  in a Hugging Face ``attention_mask``) for a real token; a pooled input takes ``[B]`` or ``[B, 1]``.

Padding is exact: padded positions are zeroed on the way in (``torch.where``, so even NaN cannot leak) and excluded
from every mean and every attention, so whatever they hold never changes an output. A sample whose tokens are all
padded for one modality (a missing modality) gives zeros from `masked_mean` and from attention over it.
"""

from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from polymodal.errors import PolymodalError

log = logging.getLogger(__name__)


@dataclass
class FusionOutput:
    """What every fusion module returns.

    pooled: ``[B, out_dim]`` the fused vector that heads consume.
    tokens: ``[B, T, out_dim]`` fused token states where the module has them (cross-attention: the query modality's
        tokens; co-attention and single-stream: every modality's tokens concatenated in input order, so
        ``tokens.split([T_0, T_1, ...], dim=1)`` gives them back per modality), else None. Padded positions are 0.
    mask: ``[B, T]`` bool, True for real positions of ``tokens``; None when ``tokens`` is None.
    attention: None, or a tuple with one entry per modality: None or ``[B, Q, T_i]``, the head-averaged weights
        that Q query positions (last layer) put on modality i's tokens; padded positions get exactly 0.
        Q = 1 for attention pooling (the learned query) and single-stream (the [CLS] token); for cross-attention
        Q = T_query and only the attended modality has an entry; for co-attention entry i holds the other
        stream's tokens attending over modality i. Use it for heat maps over image patches or words.
    modality_weights: ``[B, M]`` how much each modality counts per sample (late fusion's decision weights,
        gated fusion's mean gate), else None.
    decisions: ``[B, M, out_dim]`` each modality's own prediction (late fusion), which ``pooled`` averages with
        ``modality_weights``; a model keeping fusion decision-level applies its heads to these and averages their
        outputs (see ``decision_level``), else None.
    """

    pooled: Tensor
    tokens: Tensor | None = None
    mask: Tensor | None = None
    attention: tuple[Tensor | None, ...] | None = None
    modality_weights: Tensor | None = None
    decisions: Tensor | None = None


# a pytree node, so that torch.export (and the ONNX exporter built on it) takes a fusion module as it is, not
# only a wrapper returning its tensors ("not a known type" before)
torch.export.register_dataclass(FusionOutput, serialized_type_name="polymodal.fusion.FusionOutput")


def decision_level(head, out: "FusionOutput") -> Tensor:
    """``head`` over a fusion's output: over each modality's decision, outputs averaged with the modality weights,
    when the fusion gives decisions (late fusion); else over ``pooled``. A nonlinear head over the averaged
    decisions would read them as one additive embedding, learning interactions late fusion by design leaves out."""
    if out.decisions is None:
        return head(out.pooled)
    return (out.modality_weights[..., None] * head(out.decisions)).sum(dim=1)


def _padding_mask(m, i: int, fusion: str) -> Tensor:
    """A mask as given -> a tensor with True/1 for real tokens. An additive attention mask (0 / -inf, as
    nn.MultiheadAttention's attn_mask or Hugging Face's extended masks) would read inverted: refused."""
    if not isinstance(m, Tensor):
        try:
            m = torch.as_tensor(m)
        except (TypeError, ValueError, RuntimeError):
            raise PolymodalError(f"{fusion} fusion: mask {i} must be a [B, T] tensor (True = real token), got "
                                 f"{type(m).__name__}") from None
    if not m.is_floating_point() or _tracing():
        # the 0/1 check reads values, a branch torch.export and compile(fullgraph=True) refused on a 0/1 float mask
        # (a plain compile broke its graph here): eager calls check, as for the inverted-mask check
        return m
    if _vmapped(m):  # vmap cannot read values: the 0/1 check below would fail inside it
        raise PolymodalError(f"{fusion} fusion: mask {i} is a float mask under torch.func.vmap, where its values cannot "
                             "be checked for 0 and 1; pass a bool mask (True = real token), e.g. mask.bool()")
    if not bool(((m == 0) | (m == 1)).all()):
        raise PolymodalError(f"{fusion} fusion: mask {i} holds values other than 0 and 1 (an additive attention "
                             "mask, 0 / -inf?); pass a bool mask with True for real tokens, e.g. mask == 0")
    return m


INVERTED_CHECKS = 16


def _tracing() -> bool:
    """While tracing or compiling, a data-dependent branch (and a counter the compiler would guard on) is out."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def _vmapped(m: Tensor) -> bool:
    """True for a tensor that torch.func.vmap maps over (per-sample gradients, ensembles): reading its values
    (bool(), .item()) raises inside vmap, so the checks that read a mask skip it (or, for a float mask, refuse it)."""
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(m):  # vmap(grad(f)): grad's wrapper around vmap's batched tensor
        if functorch.is_batchedtensor(m):
            return True
        m = functorch.get_unwrapped(m)
    return False


def _looks_inverted(m: Tensor) -> bool:
    """True when some row of a bool mask has real tokens only after a padded first position while another row is
    all padding: what PyTorch's key_padding_mask (True = padding) of right-padded tokens looks like read our way."""
    if m.dim() != 2 or m.shape[1] < 2:
        return False
    late_start = ~m[:, 0] & m[:, 1:].any(1)
    return bool(late_start.any()) and bool((~m.any(1)).any())


def masked_mean(tokens: Tensor, mask: Tensor | None = None) -> Tensor:
    """``[B, T, D]`` tokens, ``[B, T]`` bool mask (True = real) -> ``[B, D]`` mean over real tokens.

    Exact: padded positions are selected away (never multiplied), so NaN or huge padding cannot leak; a sample
    without real tokens gives zeros."""
    if mask is None:
        return tokens.mean(dim=1)
    mask = mask.bool()
    summed = torch.where(mask[..., None], tokens, tokens.new_zeros(())).sum(dim=1)
    count = mask.sum(dim=1, keepdim=True).clamp(min=1).to(tokens.dtype)
    return summed / count


def masked_softmax(scores: Tensor, mask: Tensor | None, dim: int = -1) -> Tensor:
    """Softmax over ``dim`` where masked-out entries (mask False) get exactly 0 weight; a slice with no real entry
    gets all zeros (not NaN). ``mask`` broadcasts against ``scores``."""
    if mask is None:
        return scores.softmax(dim)
    mask = mask.bool()
    scores = scores.masked_fill(~mask, float("-inf"))
    any_real = mask.any(dim=dim, keepdim=True)
    scores = scores.masked_fill(~any_real, 0.0)  # an all-padded slice: finite softmax, zeroed just below
    return scores.softmax(dim) * any_real


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


# sizes (None: the module's default where it has one): 0 or 2.5 would fail inside torch, hidden=0 became out_dim
_COUNTS = ("hidden", "post_hidden", "heads", "layers", "factors", "max_len", "max_size")


def check_options(name: str, options: dict, per_modality: Sequence[str] = (), nullable: Sequence[str] | None = None
                  ) -> None:
    """The options fusions share, checked before torch meets them. ``per_modality``: the options that may also be
    one size per modality (tensor fusion's ``hidden``); elsewhere a list reached nn.Linear as a TypeError.
    ``nullable``: the size options whose None means the module's default (None: any); another None is refused
    (max_len=None, a JSON null, reached torch.randn as a TypeError)."""
    from polymodal.models.inputs import check_fraction

    for key, value in options.items():
        sizes = value if isinstance(value, (list, tuple)) and key in per_modality else [value]
        takes_none = value is None and (nullable is None or key in nullable)
        if key in _COUNTS and not takes_none and not all(_positive_int(v) for v in sizes):
            raise PolymodalError(f"{name} fusion: {key} must be a whole number of at least 1, got {value!r}")
        if key == "dropout":
            check_fraction(value, f"{name} fusion: dropout")


class FusionModule(nn.Module):
    """Base class: validates ``dims`` / ``out_dim`` and turns ``(inputs, masks)`` into token form.

    Subclasses set ``name`` (their registry key), ``min_modalities`` and ``max_modalities`` (None = no limit) and
    implement ``forward(inputs, masks=None) -> FusionOutput``."""

    name = "fusion"
    min_modalities = 2
    max_modalities: int | None = None
    per_modality_options: tuple[str, ...] = ()  # size options that may be a list, one per modality

    def __init_subclass__(cls, **kw) -> None:
        """Each subclass's options are checked however it is built: by build_fusion or as ``Cls(dims, out_dim, ...)``
        (the outermost class checks, once)."""
        super().__init_subclass__(**kw)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)
        # options whose default is None, here or in an ancestor a **kw passes them on to
        nullable = {p.name for k in cls.__mro__ if issubclass(k, FusionModule) and "__init__" in k.__dict__
                    for p in inspect.signature(k.__dict__["__init__"]).parameters.values() if p.default is None}

        @functools.wraps(init)
        def checked(self, *args, **kwargs):
            # the first __init__ called: this class's, or an ancestor's that a subclass without its own inherits
            if next(k for k in type(self).__mro__ if "__init__" in k.__dict__) is cls:
                try:
                    bound = signature.bind_partial(self, *args, **kwargs).arguments
                except TypeError:  # an unknown option: the class's own __init__ says so below
                    bound = {}
                options = {}
                for key, value in bound.items():  # options passed on as **kw are checked under their own names
                    var_kw = signature.parameters[key].kind is inspect.Parameter.VAR_KEYWORD
                    options.update(value if var_kw else {key: value})
                check_options(self.name, {k: v for k, v in options.items() if k not in ("self", "dims", "out_dim")},
                              self.per_modality_options, nullable)
            init(self, *args, **kwargs)

        cls.__init__ = checked

    def __init__(self, dims: Sequence[int], out_dim: int) -> None:
        super().__init__()
        dims = list(dims) if isinstance(dims, (list, tuple)) else dims
        if not isinstance(dims, list) or not all(_positive_int(d) for d in dims):
            raise PolymodalError(
                f"{self.name} fusion: dims must be a list of positive ints (one per modality), got {dims!r}"
            )
        if not _positive_int(out_dim):
            raise PolymodalError(f"{self.name} fusion: out_dim must be a positive int, got {out_dim!r}")
        lo, hi = self.min_modalities, self.max_modalities
        if len(dims) < lo or (hi is not None and len(dims) > hi):
            wanted = f"exactly {lo}" if lo == hi else f"at least {lo}" if hi is None else f"{lo} to {hi}"
            raise PolymodalError(
                f"{self.name} fusion takes {wanted} modalities, got {len(dims)} (dims={dims}); "
                + ("fuse modalities pairwise or pick a fusion that takes more (concat, gated, single_stream)"
                   if hi == 2 else "pass one input size per modality")
            )
        self.dims = dims
        self.out_dim = out_dim
        # The inverted-mask check reads the mask back (a device sync on a GPU), so it looks at the first
        # INVERTED_CHECKS masks only: a swapped convention shows in the first batch, and is said once per module.
        self._inverted_checks_left = INVERTED_CHECKS

    def prepare(
        self, inputs: Sequence[Tensor], masks: Sequence[Tensor | None] | None = None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Validate and normalise: returns ``[B, T_i, D_i]`` tokens with padded positions zeroed, and
        ``[B, T_i]`` bool masks (never None)."""
        if isinstance(inputs, Tensor) or len(inputs) != len(self.dims):
            got = "one tensor" if isinstance(inputs, Tensor) else (
                "1 input" if len(inputs) == 1 else f"{len(inputs)} inputs")
            raise PolymodalError(
                f"{self.name} fusion was built for {len(self.dims)} modalities (dims={self.dims}) but got {got}; "
                "pass a list with one [B, T, D] or [B, D] tensor per modality"
            )
        if masks is None:
            masks = [None] * len(inputs)
        if isinstance(masks, Tensor) or len(masks) != len(inputs):
            raise PolymodalError(
                f"{self.name} fusion: masks must be None or a list with one entry per modality ({len(inputs)})"
            )
        batch = None
        tokens_out, masks_out = [], []
        for i, (x, m, d) in enumerate(zip(inputs, masks, self.dims)):
            if not isinstance(x, Tensor) or x.dim() not in (2, 3) or x.shape[-1] != d:
                shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise PolymodalError(
                    f"{self.name} fusion: modality {i} must be [B, T, {d}] tokens or [B, {d}] pooled, got {shape}; "
                    "check the order of inputs against dims"
                )
            x = self._as_weight_dtype(x, i)
            if x.dim() == 2:
                x = x[:, None, :]
            b, t = x.shape[:2]
            if batch is None:
                batch = b
            elif b != batch:
                raise PolymodalError(f"{self.name} fusion: modality {i} has batch size {b}, modality 0 has {batch}")
            if m is None:
                m = torch.ones(b, t, dtype=torch.bool, device=x.device)
            else:
                m = _padding_mask(m, i, self.name)
                if m.dim() == 1 and t == 1:
                    m = m[:, None]
                if tuple(m.shape) != (b, t):
                    raise PolymodalError(
                        f"{self.name} fusion: mask {i} must be [B, T] = [{b}, {t}] (True = real token), "
                        f"got {tuple(m.shape)}"
                    )
                m = m.to(device=x.device) != 0 if m.dtype != torch.bool else m.to(device=x.device)
                # never read while compiling (no guard on it) or inside vmap (a mapped mask cannot be read)
                if not _tracing() and self._inverted_checks_left > 0 and not _vmapped(m):
                    self._inverted_checks_left -= 1
                    if _looks_inverted(m):
                        self._inverted_checks_left = 0
                        log.warning("%s fusion: mask %d looks inverted (rows whose tokens start after padding, "
                                    "beside rows of padding only): polymodal's masks are True for real tokens, as "
                                    "Hugging Face's attention_mask; PyTorch's key_padding_mask is the opposite: "
                                    "pass ~mask (left-padded text beside an empty row looks the same: then it is "
                                    "right as it is)", self.name, i)
                x = torch.where(m[..., None], x, x.new_zeros(()))
            tokens_out.append(x)
            masks_out.append(m)
        return tokens_out, masks_out

    def _as_weight_dtype(self, x: Tensor, i: int) -> Tensor:
        """Integer or bool features become the weights' dtype (every fusion then takes them, not only the linear
        ones); another float dtype is a mistake to name (torch.from_numpy of a float64 array), unless autocast runs
        and takes it (float32 and autocast's own dtype as they are; another half dtype cast to autocast's)."""
        weight = next(self.parameters(), None)
        if weight is None or x.dtype == weight.dtype:
            return x
        if not (x.is_floating_point() or x.is_complex()):
            return x.to(weight.dtype)
        if torch.is_autocast_enabled(x.device.type):
            # autocast casts float32 and other half dtypes to its own, but never float64, which failed inside the
            # first matmul as "mat1 and mat2 must have the same dtype"; a third dtype (float16 under bf16) ran in most
            # fusions but met torch.cat's promotion unprepared in concat and gated: cast here, as autocast would
            fast = torch.get_autocast_dtype(x.device.type)
            if x.dtype in (torch.float32, fast):
                return x
            if x.dtype != torch.float64 and x.is_floating_point():
                return x.to(fast)
            raise PolymodalError(f"{self.name} fusion: modality {i} is {x.dtype}; under autocast ({fast}) pass "
                                 f"float32 or {fast} inputs (x.float())")
        raise PolymodalError(f"{self.name} fusion: modality {i} is {x.dtype} but the module's weights are "
                             f"{weight.dtype}; cast the inputs (x.to({weight.dtype})) or the module (.to(dtype))")

    def forward(self, inputs: Sequence[Tensor], masks: Sequence[Tensor | None] | None = None) -> FusionOutput:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"dims={self.dims}, out_dim={self.out_dim}"


def mlp(d_in: int, hidden: int, d_out: int, dropout: float = 0.0) -> nn.Sequential:
    """Linear -> GELU -> Dropout -> Linear: the small nonlinear map several fusions end with."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d_out))

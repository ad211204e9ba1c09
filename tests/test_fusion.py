"""Every fusion module: shapes, exact masking, gradients to every input and parameter, and a tiny task that needs
both modalities (XOR of a bit carried by each). Dims are tiny so the whole file runs in seconds on a CPU."""

import inspect

import pytest
import torch
from torch import nn

from polymodal.errors import PolymodalError
from polymodal.fusion import FUSIONS, FusionOutput, build_fusion, masked_mean

NAMES = list(FUSIONS)
MULTI = [n for n in NAMES if FUSIONS[n].max_modalities is None]
PAIRWISE = [n for n in NAMES if FUSIONS[n].max_modalities == 2]
DIMS, OUT, B = [6, 10], 8, 3


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: threads only add overhead (and the test machine is shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make(name, dims=DIMS, out_dim=OUT, **kw):
    torch.manual_seed(0)
    return build_fusion(name, dims, out_dim, **kw).eval()


def padded_inputs(dims=DIMS, lengths=(4, 5), seed=1):
    """Tokens with some padding: sample 0 full, sample 1 short, sample 2 missing modality 1 entirely."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(B, t, d, generator=g) for t, d in zip(lengths, dims)]
    masks = []
    for i, t in enumerate(lengths):
        m = torch.ones(B, t, dtype=torch.bool)
        m[1, t // 2 :] = False
        if i == 1:
            m[2] = False
        masks.append(m)
    return xs, masks


def check_output(out: FusionOutput, lengths, batch=B):
    assert isinstance(out, FusionOutput)
    assert out.pooled.shape == (batch, OUT)
    assert torch.isfinite(out.pooled).all()
    if out.tokens is not None:
        assert out.tokens.shape[0] == batch and out.tokens.shape[2] == OUT
        assert out.mask.shape == out.tokens.shape[:2] and out.mask.dtype == torch.bool
    if out.attention is not None:
        assert len(out.attention) == len(lengths)
        for att, t in zip(out.attention, lengths):
            if att is not None:
                assert att.dim() == 3 and att.shape[0] == batch and att.shape[2] == t
                assert (att >= 0).all()
    if out.modality_weights is not None:
        assert out.modality_weights.shape == (batch, len(lengths))


@pytest.mark.parametrize("name", NAMES)
def test_shapes_tokens(name):
    xs, masks = padded_inputs()
    out = make(name)(xs, masks)
    check_output(out, [4, 5])
    expected_t = {"cross_attention": 4, "co_attention": 9, "single_stream": 9}
    if name in expected_t:
        assert out.tokens.shape[1] == expected_t[name]


@pytest.mark.parametrize("name", NAMES)
def test_shapes_pooled_and_mixed(name):
    fusion = make(name)
    pooled = [torch.randn(B, d) for d in DIMS]
    check_output(fusion(pooled), [1, 1])
    # a pooled vector with a per-sample presence mask [B], next to tokens with no mask at all
    check_output(fusion([pooled[0], torch.randn(B, 5, DIMS[1])], [torch.tensor([True, False, True]), None]), [1, 5])


@pytest.mark.parametrize("name", MULTI)
def test_three_modalities(name):
    dims = [6, 10, 4]
    xs, _ = padded_inputs(dims, (4, 5, 2))
    check_output(make(name, dims)(xs), [4, 5, 2])


@pytest.mark.parametrize("name", PAIRWISE)
def test_pairwise_modules_refuse_other_counts(name):
    for dims in ([6], [6, 10, 4]):
        with pytest.raises(PolymodalError, match=f"{name} fusion takes exactly 2 modalities, got {len(dims)}"):
            build_fusion(name, dims, OUT)


def _same(a, b):
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_padding_never_changes_the_output(name):
    fusion = make(name)
    xs, masks = padded_inputs()
    with torch.no_grad():
        ref = fusion(xs, masks)
        # append garbage tokens (huge values and NaN) marked padding, and scribble over the existing padding
        g = torch.Generator().manual_seed(7)
        ext_xs, ext_masks = [], []
        for x, m in zip(xs, masks):
            junk = 1e3 * torch.randn(B, 3, x.shape[2], generator=g)
            junk[:, 1] = float("nan")
            x = torch.where(m[..., None], x, 1e3 * torch.randn(x.shape, generator=g))
            ext_xs.append(torch.cat([x, junk], dim=1))
            ext_masks.append(torch.cat([m, torch.zeros(B, 3, dtype=torch.bool)], dim=1))
        out = fusion(ext_xs, ext_masks)
    _same(out.pooled, ref.pooled)
    if ref.tokens is not None:
        _same(out.tokens[out.mask], ref.tokens[ref.mask])
        assert (out.tokens[~out.mask] == 0).all() and (ref.tokens[~ref.mask] == 0).all()
    if ref.attention is not None:
        for a_ext, a_ref, m in zip(out.attention, ref.attention, ext_masks):
            if a_ref is None:
                assert a_ext is None
                continue
            q, t = a_ref.shape[1:]
            _same(a_ext[:, :q, :t], a_ref)
            assert (a_ext[:, :, t:] == 0).all()  # the appended garbage gets exactly no weight
            assert (a_ext.masked_select(~m[:, None, :].expand_as(a_ext)) == 0).all()
    if ref.modality_weights is not None:
        _same(out.modality_weights, ref.modality_weights)


@pytest.mark.parametrize("name", NAMES)
def test_left_padding_never_changes_the_output(name):
    """Padding in front (left-padded text, as decoder tokenizers pad) is padding too: no position may shift."""
    fusion = make(name)
    xs, masks = padded_inputs()
    g = torch.Generator().manual_seed(11)
    front_xs, front_masks = [], []
    for x, m in zip(xs, masks):
        front_xs.append(torch.cat([1e3 * torch.randn(B, 2, x.shape[2], generator=g), x], dim=1))
        front_masks.append(torch.cat([torch.zeros(B, 2, dtype=torch.bool), m], dim=1))
    with torch.no_grad():
        ref, out = fusion(xs, masks), fusion(front_xs, front_masks)
    _same(out.pooled, ref.pooled)
    if ref.tokens is not None:
        _same(out.tokens[out.mask], ref.tokens[ref.mask])


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_input_and_parameter(name):
    fusion = make(name).train()  # default dropout is 0, so train mode is deterministic too
    xs, masks = padded_inputs()
    xs = [x.requires_grad_() for x in xs]
    out = fusion(xs, masks)
    # the pooled vector alone (what a classification head uses) must reach everything: no unused parameters,
    # which DistributedDataParallel would otherwise reject
    (out.pooled * torch.randn(out.pooled.shape, generator=torch.Generator().manual_seed(3))).sum().backward()
    for i, (x, m) in enumerate(zip(xs, masks)):
        per_token = x.grad.abs().sum(-1)
        assert (per_token[m] > 0).all(), f"modality {i}: a real token got no gradient"
        assert (per_token[~m] == 0).all(), f"modality {i}: padding got a gradient"
    for pname, p in fusion.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"parameter {pname} is unused"


# ---- learning: a task that needs both modalities -------------------------------------------------------------
T, D, HID = 4, 16, 16


def bit_tokens(signs, g, signal=3.0):
    """[N, T, D] noisy tokens whose coordinate 0 carries `signs` (+-1, or 0 for no signal) on real tokens; random
    length 1..T; the padding carries the opposite sign, loudly, so a module that peeks at padding is misled."""
    n = signs.shape[0]
    lengths = torch.randint(1, T + 1, (n,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    x = torch.randn(n, T, D, generator=g)
    x[..., 0] += torch.where(mask, signal * signs[:, None], -3 * signal * signs[:, None])
    return x, mask


def xor_batch(n, g):
    """Modality A carries bit a, B carries bit b, label = a XOR b: each modality alone says nothing about it."""
    a, b = torch.randint(0, 2, (n,), generator=g), torch.randint(0, 2, (n,), generator=g)
    (xa, ma), (xb, mb) = bit_tokens(2.0 * a - 1, g), bit_tokens(2.0 * b - 1, g)
    return [xa, xb], [ma, mb], a ^ b


def evidence_batch(n, g):
    """Complementary evidence: the label shows in A for a random half of the samples and in B for the other half
    (the other modality is pure noise there): either modality alone gets ~75%, both together ~100%."""
    y = torch.randint(0, 2, (n,), generator=g)
    in_a = torch.rand(n, generator=g) < 0.5
    sign = 2.0 * y - 1
    (xa, ma), (xb, mb) = bit_tokens(sign * in_a, g), bit_tokens(sign * ~in_a, g)
    return [xa, xb], [ma, mb], y


def train_and_score(fusion, batch_fn, steps=400, lr=3e-3, keep=None, seed=0):
    """Train fusion + a linear classifier on its pooled vector; return held-out accuracy. `keep` optionally maps
    the batch's inputs before the fusion sees them (to hide a modality)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    clf = nn.Linear(fusion.out_dim, 2)
    opt = torch.optim.Adam([*fusion.parameters(), *clf.parameters()], lr=lr)
    test_x, test_m, test_y = batch_fn(512, torch.Generator().manual_seed(seed + 100))
    keep = keep or (lambda xs, ms: (xs, ms))

    def accuracy():
        fusion.eval()
        with torch.no_grad():
            pred = clf(fusion(*keep(test_x, test_m)).pooled).argmax(-1)
        fusion.train()
        return (pred == test_y).float().mean().item()

    fusion.train()
    acc = 0.0
    for step in range(1, steps + 1):
        xs, ms, y = batch_fn(128, g)
        loss = nn.functional.cross_entropy(clf(fusion(*keep(xs, ms)).pooled), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            acc = accuracy()
            if acc >= 0.97:
                break
    return acc


@pytest.mark.parametrize("name", [n for n in NAMES if n != "late"])
def test_learns_xor_across_modalities(name):
    acc = train_and_score(make(name, [D, D], HID), xor_batch)
    assert acc >= 0.9, f"{name} fusion reached only {acc:.2f} on XOR"


def test_one_modality_alone_cannot_solve_xor():
    for keep_index in (0, 1):
        alone = train_and_score(
            make("concat", [D], HID), xor_batch, steps=200, keep=lambda xs, ms: ([xs[keep_index]], [ms[keep_index]])
        )
        assert 0.4 <= alone <= 0.6, f"modality {keep_index} alone scored {alone:.2f}: the task leaks"


def test_late_fusion_combines_complementary_evidence():
    # decision-level fusion only adds per-modality scores, so XOR is out of its reach by construction;
    # its task is combining independent evidence, which neither modality supplies alone
    assert train_and_score(make("late", [D, D], HID), evidence_batch) >= 0.9
    alone = train_and_score(
        make("concat", [D], HID), evidence_batch, steps=200, keep=lambda xs, ms: ([xs[0]], [ms[0]])
    )
    assert alone <= 0.82
    assert train_and_score(make("late", [D, D], HID), xor_batch, steps=200) <= 0.65


# ---- options and errors ----------------------------------------------------------------------------------------
def test_late_fusion_fixed_weights_and_missing_modality():
    fusion = make("late", weights=[3, 1])
    xs, masks = padded_inputs()
    out = fusion(xs, masks)
    preds, present = fusion.decisions(xs, masks)
    torch.testing.assert_close(out.modality_weights[0], torch.tensor([0.75, 0.25]))
    torch.testing.assert_close(out.modality_weights[2], torch.tensor([1.0, 0.0]))  # sample 2 lacks modality 1
    torch.testing.assert_close(out.pooled[2], preds[2, 0])
    assert not any(p.requires_grad for n, p in fusion.named_parameters() if "logits" in n)
    with pytest.raises(PolymodalError, match="weights"):
        build_fusion("late", DIMS, OUT, weights=[1, -1])


def test_gated_fusion_gives_a_missing_modality_zero_gate():
    xs, masks = padded_inputs()
    w = make("gated")(xs, masks).modality_weights
    torch.testing.assert_close(w.sum(-1), torch.ones(B))
    assert w[2, 1] == 0


def test_tensor_fusion_size_is_checked():
    assert make("tensor", [6, 10, 4], hidden=8).size == 9**3
    with pytest.raises(PolymodalError, match=r"35,937 features per sample.*lower hidden"):
        build_fusion("tensor", [6, 10, 4], OUT, hidden=32, max_size=10_000)


def test_tensor_fusion_keeps_unimodal_terms():
    # the appended constant 1 keeps each modality's own terms: with modality 1's features all zero, the product
    # still holds modality 0's, so samples stay apart (appending 0 would zero the whole product)
    fusion = make("tensor")
    with torch.no_grad():
        fusion.subnets[1][0].bias.fill_(-1e4)  # ReLU -> exactly 0 for every sample
        pooled = fusion(padded_inputs()[0]).pooled
    assert (pooled - pooled[0]).abs().amax() > 1e-4


def test_bilinear_output_is_unit_length_unless_asked_not_to():
    xs, masks = padded_inputs()
    torch.testing.assert_close(make("bilinear")(xs, masks).pooled.norm(dim=-1), torch.ones(B))
    raw = make("bilinear", normalize=False)(xs, masks).pooled.norm(dim=-1)
    assert ((raw - 1).abs() > 1e-3).all()


def test_cross_attention_padded_queries_attend_nowhere():
    xs, masks = padded_inputs()
    att = make("cross_attention")(xs, masks).attention[1]  # [B, T_query, T_key]: modality 0 asks
    assert (att[1, 2:] == 0).all()  # sample 1's query tokens 2.. are padding
    torch.testing.assert_close(att[0].sum(-1), torch.ones(4))


def test_co_attention_streams_read_the_previous_layer():
    # ViLBERT: in one layer both streams attend to the other's states from BEFORE this layer
    fusion = make("co_attention")
    xs, masks = padded_inputs()
    with torch.no_grad():
        out = fusion(xs, masks)
        a, b = fusion.proj[0](xs[0]), fusion.proj[1](xs[1])
        _, w_ab = fusion.blocks[0][0](a, b, masks[1])
        _, w_ba = fusion.blocks[0][1](b, a, masks[0])
    _same(out.attention[0], w_ba.mean(dim=1) * masks[1][..., None])
    _same(out.attention[1], w_ab.mean(dim=1) * masks[0][..., None])


def test_single_stream_gives_each_modality_its_own_type_embedding():
    fusion = make("single_stream").train()
    xs, masks = padded_inputs()
    (fusion(xs, masks).pooled * torch.randn(B, OUT, generator=torch.Generator().manual_seed(3))).sum().backward()
    assert (fusion.type_embedding.grad.abs().sum(-1) > 0).all()  # a row no modality reads would get no gradient


def test_single_stream_max_len():
    with pytest.raises(PolymodalError, match="max_len=3"):
        make("single_stream", max_len=3)(padded_inputs()[0])


def test_masked_mean_is_exact():
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [float("nan"), 1e9]]])
    m = torch.tensor([[True, True, False]])
    torch.testing.assert_close(masked_mean(x, m), torch.tensor([[2.0, 3.0]]))
    torch.testing.assert_close(masked_mean(x, torch.zeros_like(m)), torch.zeros(1, 2))


def test_build_fusion_unknown_name_names_the_choices():
    with pytest.raises(PolymodalError, match="unknown fusion 'nope'; choose one of concat, late, .*single_stream"):
        build_fusion("nope", DIMS, OUT)


def test_build_fusion_unknown_option_and_bad_heads():
    with pytest.raises(PolymodalError, match="concat fusion has no option 'heads'; its options are hidden, dropout"):
        build_fusion("concat", DIMS, OUT, heads=2)
    with pytest.raises(PolymodalError, match="heads=3 must be a positive int dividing out_dim=8"):
        build_fusion("co_attention", DIMS, OUT, heads=3)


def test_wrong_inputs_are_clear_errors():
    fusion = make("concat")
    with pytest.raises(PolymodalError, match="built for 2 modalities"):
        fusion([torch.randn(B, 6)])
    with pytest.raises(PolymodalError, match=r"modality 1 must be \[B, T, 10\]"):
        fusion([torch.randn(B, 6), torch.randn(B, 4, 6)])
    with pytest.raises(PolymodalError, match=r"mask 0 must be \[B, T\] = \[3, 4\]"):
        fusion([torch.randn(B, 4, 6), torch.randn(B, 10)], [torch.ones(B, 5, dtype=torch.bool), None])
    with pytest.raises(PolymodalError, match="batch size"):
        fusion([torch.randn(B, 6), torch.randn(B + 1, 10)])


def test_every_module_documents_its_options():
    for name, cls in FUSIONS.items():
        options = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "dims", "out_dim")]
        for option in options:
            assert option in (cls.__doc__ or ""), f"{name}: option {option!r} is not in the docstring"

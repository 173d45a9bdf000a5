import sys, torch
from collections import Counter
from torch._subclasses.fake_tensor import FakeTensorMode
from llmspec import load_spec
from llmspec.measure import _build, _routing, _with_checkpointing
spec = _with_checkpointing(load_spec(sys.argv[1], sys.argv[3:]), sys.argv[2])
with FakeTensorMode():
    model = _build(spec)
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    saved = {}
    def pack(t):
        st = t.untyped_storage()
        if st._cdata not in params and st._cdata not in saved:
            saved[st._cdata] = (tuple(t.shape), str(t.dtype), st.nbytes(), tuple(t.stride()))
        return t
    tr = spec.training
    idx = torch.zeros((tr.micro_batch_size, tr.seq_len), dtype=torch.long)
    tgt = torch.zeros((tr.micro_batch_size, tr.seq_len), dtype=torch.long)
    with _routing(spec), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(idx, tgt)
for v in saved.values(): print(v)
print(sum(v[2] for v in saved.values()))

import time, sys
from llmspec import load_spec
from llmspec.measure import measure
for n in sys.argv[1:]:
    t=time.time()
    m = measure(load_spec(n))
    print(n, f"{time.time()-t:.1f}s", m.params.to_json())
    for mode in m.flops:
        print('   ', mode, 'flops %.4f'%m.flops[mode].ratio, 'act', m.activations[mode].measured, m.activations[mode].planned, '%.4f'%m.activations[mode].ratio)

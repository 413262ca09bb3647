"""A dict of 2 M entries deleted at the front and inserted at the end, as the shards' dedupe
memory is once full (domain/ledger.py): each operation is timed and pauses over 5 ms printed.
CPython rebuilds the dict whole when its entry table fills with deleted slots.

    python3 scripts/bench_dedupe_dict.py
"""
import time
from collections import deque
N=2_000_000
d={}; order=deque()
for k in range(N):
    d[k]=(k,0,182,1000); order.append(k)
worst=[]; k=N
t_all=time.perf_counter()
for i in range(3_000_000):
    t=time.perf_counter()
    d[k]=(k,0,182,1000); order.append(k); k+=1
    old=order.popleft(); del d[old]
    dt=time.perf_counter()-t
    if dt>0.005: worst.append((i,round(dt*1000,1)))
print("ops 3M in", round(time.perf_counter()-t_all,1),"s; pauses >5 ms:", worst[:10], "count", len(worst))

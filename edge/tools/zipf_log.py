#!/usr/bin/env python3
"""A day of edge requests for `edge replay --disk-policy ...` comparisons.

20,000 segments of 0.3-3 MB with Zipf(0.9) popularity that drifts every
30,000 rows, plus 10% one-hit wonders (a scan). 300,000 rows of the contract
CSV (`ts_ms,client_ip,key,bytes`) to ./day.csv. Deterministic (seed 7).
"""
import random, bisect
random.seed(7)
N=20000
# object sizes ~ 0.3-3 MB; popularity Zipf(0.9) with popularity drifting: each hour new titles get hot
sizes=[random.randint(300_000,3_000_000) for _ in range(N)]
def zipf_cdf(n,a):
    w=[1/(i+1)**a for i in range(n)]
    t=sum(w); c=[];s=0
    for x in w: s+=x; c.append(s/t)
    return c
cdf=zipf_cdf(N,0.9)
perm=list(range(N)); random.shuffle(perm)
out=open('day.csv','w'); out.write('ts_ms,client_ip,key,bytes\n')
ts=1_760_000_000_000
R=300_000
for r in range(R):
    if r%30000==0 and r>0:
        # drift: 5% of ranks swap to new objects
        for _ in range(N//20):
            i=random.randrange(2000); j=random.randrange(N)
            perm[i],perm[j]=perm[j],perm[i]
    u=random.random()
    rank=bisect.bisect_left(cdf,u)
    o=perm[min(rank,N-1)]
    # scans: 10% of requests are one-hit wonders from a long tail
    if random.random()<0.1:
        o=N+random.randrange(10**7)
        size=random.randint(300_000,3_000_000)
    else:
        size=sizes[o]
    out.write(f"{ts+r*100},10.0.{r%250}.1,titles/t{o//100}/v1/{o%100+1}.m4s,{size}\n")

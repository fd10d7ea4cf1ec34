"""Which Colin27/AAL protocol reproduces docs/data.md's atlas numbers? (its wording is ambiguous)

Measures LiteMedSAM tight-box Dice for each intensity handling (MR slice percentiles, raw
min-max, volume percentiles) and each reading of "structure" (left, left and right separately,
both as one mask). Output: benchmarks/results/atlas_protocol.txt. Slow: ~500 encoder passes.
"""
import json

import nibabel as nib
import numpy as np

from segmote.build import load_model
from segmote.predict.segmenter import Segmenter
from segmote.samples import fetch_sample
D=str(fetch_sample("colin27"))+"/"
img=np.asarray(nib.load(D+"Dataset003_Colin27AAL/imagesTr/colin27_0000.nii.gz").dataobj).astype(np.float32)
aal=np.asarray(nib.load(D+"Dataset003_Colin27AAL/labelsTr/colin27.nii.gz").dataobj)
brain=np.asarray(nib.load(D+"Dataset004_Colin27Brain/labelsTr/colin27.nii.gz").dataobj)>0
labels=json.load(open(D+"Dataset003_Colin27AAL/dataset.json"))["labels"]
seg=Segmenter(load_model(adapter=None))
lo,hi=np.percentile(img,[0.5,99.5])
VAR={"none":lambda s: s, "slicepct":"MR", "volpct":lambda s: np.clip(s,lo,hi)}
cache={}
def dice(a,b): return 2*(a&b).sum()/(a.sum()+b.sum())
def setz(var,z):
    k=(var,z)
    if k not in cache:
        s=np.rot90(img[:,:,z])
        if var=="slicepct": seg.set_image(s, modality="MR")
        else: seg.set_image(VAR[var](s))
        cache[k]=(seg.features,seg.geometry)
    seg.features,seg.geometry=cache[k]
def zr(mask3d):
    zs=np.nonzero(mask3d.any((0,1)))[0]; z0,z1=zs.min(),zs.max(); q=(z1-z0)/4
    return range(int(np.ceil(z0+q)), int(np.floor(z1-q))+1)
def run(mask3d, var, zrange):
    out=[]
    for z in zrange:
        gt=np.rot90(mask3d[:,:,z])
        if gt.sum()==0: continue
        setz(var,z)
        ys,xs=np.nonzero(gt); H,W=gt.shape
        box=(max(xs.min()-2,0),max(ys.min()-2,0),min(xs.max()+2,W-1),min(ys.max()+2,H-1))
        m,_=seg.predict(box=box); out.append(dice(m,gt))
    return out
for var in ["slicepct","none","volpct"]:
    for name in ["Thalamus","Hippocampus","Caudate"]:
        L=aal==labels[name+"_L"]; R=aal==labels[name+"_R"]; C=L|R
        sep=run(L,var,zr(L))+run(R,var,zr(R)); sepc=run(L,var,zr(C))+run(R,var,zr(C))
        left=run(L,var,zr(L)); comb=run(C,var,zr(C))
        print(var,name,"sep",len(sep),round(np.mean(sep),3),"sep_zcomb",len(sepc),round(np.mean(sepc),3),"left",round(np.mean(left),3),"comb",len(comb),round(np.mean(comb),3),flush=True)
    b=run(brain,var,zr(brain)); print(var,"brain",len(b),round(np.mean(b),3),flush=True)

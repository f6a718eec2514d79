"""Home page: what is installed and usable here, the checkpoints found, where files go, and every page."""

from __future__ import annotations

import streamlit as st

from neuroattn.system import collect_system_info
from neuroattn.web.pages import registered_pages
from neuroattn.web.runs import find_harmonizers
from neuroattn.web.ui import app_settings

st.title("neuroattn")
st.caption("Attention-based brain models: MRI harmonization, fMRI foundation models, decoding and encoding.")
settings = app_settings()
info = collect_system_info()
st.markdown(f"**Workspace** (uploads, runs and outputs): `{settings.workspace}`")
roots = ", ".join(f"`{r}`" for r in settings.data_roots) or "none besides the workspace"
st.markdown(f"**Server folders the app may read**: {roots} · **upload limit** {settings.max_upload_mb} MB")

st.subheader("Pages")
for page in registered_pages():
    st.page_link(page.script, label=f"{page.title} — {page.summary}", icon=page.icon)

col_device, col_kernels = st.columns(2)
with col_device:
    st.subheader("Compute")
    st.write(f"Device: **{info.device}**" + (f" ({', '.join(info.cuda_devices)})" if info.cuda_devices else ""))
    st.write(f"neuroattn {info.neuroattn} · Python {info.python}")
with col_kernels:
    st.subheader("Attention kernels")
    st.table({"kernel": list(info.attention_kernels), "available": list(info.attention_kernels.values())})

st.subheader("Checkpoints in the runs folder")
entries = find_harmonizers(settings.runs)
if entries:
    st.table({"checkpoint": [e.label(settings.runs) for e in entries],
              "sites": [", ".join(e.sites) for e in entries], "target": [e.target_site for e in entries]})
else:
    st.info(f"No checkpoints under `{settings.runs}` yet: train the demo model on the Harmonize page, "
            "or run `neuroattn harmonize train --out` into that folder.")

with st.expander("Packages"):
    st.table({"package": list(info.packages), "version": [v or "not installed" for v in info.packages.values()]})

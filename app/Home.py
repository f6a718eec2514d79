"""neuroattn web app, Home page: what is installed and usable here, and where files go."""

from __future__ import annotations

import streamlit as st

from neuroattn.system import collect_system_info
from neuroattn.webapp import default_workspace


def main() -> None:
    st.set_page_config(page_title="neuroattn", layout="wide")
    st.title("neuroattn")
    st.caption("Attention-based brain models: MRI harmonization, fMRI foundation models, decoding and encoding.")
    info = collect_system_info()
    workspace = default_workspace()
    st.markdown(f"**Workspace** (uploads and outputs): `{workspace}`")
    col_device, col_kernels = st.columns(2)
    with col_device:
        st.subheader("Compute")
        st.write(f"Device: **{info.device}**" + (f" ({', '.join(info.cuda_devices)})" if info.cuda_devices else ""))
        st.write(f"neuroattn {info.neuroattn} · Python {info.python}")
    with col_kernels:
        st.subheader("Attention kernels")
        st.table({"kernel": list(info.attention_kernels), "available": list(info.attention_kernels.values())})
    st.subheader("Packages")
    st.table({"package": list(info.packages), "version": [v or "not installed" for v in info.packages.values()]})


main()

"""Interactive 3-D view of a triangle mesh: a plotly Mesh3d with its vertex colours, equal aspect and no axes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from neuroattn.brain3d.mesh import Mesh, load_mesh
from neuroattn.errors import InvalidInputError

DEFAULT_COLOUR = (0.7, 0.7, 0.7)  # grey for meshes without vertex colours (as the core renderer)
_LIGHTING = dict(ambient=0.45, diffuse=0.7, specular=0.15, roughness=0.8, fresnel=0.1)


def vertex_colour_strings(colours: np.ndarray | None, n_vertices: int) -> list[str]:
    """CSS ``rgb(r,g,b)`` strings (V,) of vertex colours (V, 3) in [0, 1] (grey when ``colours`` is None)."""
    rgb = np.tile(DEFAULT_COLOUR, (n_vertices, 1)) if colours is None else np.asarray(colours, dtype=np.float64)
    if rgb.shape != (n_vertices, 3):
        raise InvalidInputError(f"vertex colours of shape {rgb.shape}; expected ({n_vertices}, 3)")
    ints = np.clip(np.round(rgb * 255), 0, 255).astype(np.int64)  # (V, 3)
    return [f"rgb({r},{g},{b})" for r, g, b in ints]


def mesh_figure(mesh: Mesh | str | Path, title: str = "", *, height: int = 520) -> Any:
    """A rotatable plotly figure of a mesh (or a mesh file: .glb/.ply/.obj).

    One ``Mesh3d`` trace holds the vertices (V, 3) in the file's order and units, the faces (F, 3) as ``i, j, k``
    and one colour per vertex; the scene keeps the data's aspect ratio (``aspectmode="data"``) and hides axes,
    grids and backgrounds. An empty mesh is an :class:`InvalidInputError`.
    """
    import plotly.graph_objects as go

    source = None if isinstance(mesh, Mesh) else Path(mesh)
    if source is not None:
        mesh = load_mesh(source)
    assert isinstance(mesh, Mesh)
    if len(mesh.faces) == 0 or len(mesh.vertices) == 0:
        raise InvalidInputError("the mesh is empty (no faces to show)", source)
    v, f = np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)
    trace = go.Mesh3d(x=v[:, 0], y=v[:, 1], z=v[:, 2], i=f[:, 0], j=f[:, 1], k=f[:, 2],
                      vertexcolor=vertex_colour_strings(mesh.vertex_colors, len(v)), flatshading=False,
                      lighting=_LIGHTING, lightposition=dict(x=100, y=200, z=150), hoverinfo="skip", name="mesh")
    hidden = dict(visible=False, showgrid=False, zeroline=False, showbackground=False, showticklabels=False,
                  title="")
    fig = go.Figure(trace)
    fig.update_layout(
        title=dict(text=title, font=dict(size=13)) if title else None,
        height=height, margin=dict(l=0, r=0, t=40 if title else 0, b=0), showlegend=False,
        scene=dict(xaxis=hidden, yaxis=hidden, zaxis=hidden, aspectmode="data",
                   camera=dict(eye=dict(x=1.4, y=1.4, z=0.9))),
        paper_bgcolor="white",
    )
    return fig


def figure_vertices(fig: Any) -> np.ndarray:
    """The vertices (V, 3) float64 of a :func:`mesh_figure` (its Mesh3d trace's x, y, z)."""
    trace = next(t for t in fig.data if t.type == "mesh3d")
    return np.stack([np.asarray(trace.x, dtype=np.float64), np.asarray(trace.y, dtype=np.float64),
                     np.asarray(trace.z, dtype=np.float64)], axis=1)  # (V, 3)

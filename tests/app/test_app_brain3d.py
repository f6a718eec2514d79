"""Brain3D page headless: a tiny data folder and ridge run; generate from a test trial or an image, view, errors."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import trimesh
from app_test_support import APP_DIR, DecodeWorkspace, make_decode_workspace
from PIL import Image
from streamlit.testing.v1 import AppTest

from neuroattn.brain3d.conditioning import decode_conditioning, region_groups
from neuroattn.brain3d.mesh import Mesh, load_mesh, mesh_from_grid
from neuroattn.brain3d.shapes import grid_points
from neuroattn.data.nsd import load_subject
from neuroattn.decode.runs import open_run
from neuroattn.errors import InvalidInputError
from neuroattn.web.brain3d_page import find_brain3d_outputs, open_output
from neuroattn.web.mesh_viewer import figure_vertices, mesh_figure
from neuroattn.web.settings import load_settings

BRAIN3D = str(APP_DIR / "views" / "brain3d.py")
DOWNLOADS = ["Download mesh.glb", "Download mesh.ply", "Download mesh.obj", "Download turntable.gif"]


@pytest.fixture(scope="module")
def brain3d_workspace(tmp_path_factory: pytest.TempPathFactory) -> DecodeWorkspace:
    return make_decode_workspace(tmp_path_factory.mktemp("brain3d_ws"))


@pytest.fixture
def brain3d_env(brain3d_workspace: DecodeWorkspace, monkeypatch: pytest.MonkeyPatch) -> DecodeWorkspace:
    monkeypatch.setenv("NEUROATTN_WORKSPACE", str(brain3d_workspace.root))
    monkeypatch.delenv("NEUROATTN_DATA_ROOTS", raising=False)
    monkeypatch.setenv("NEUROATTN_MAX_UPLOAD_MB", "1")
    monkeypatch.delenv("NEUROATTN_PIPELINES", raising=False)
    return brain3d_workspace


def _page() -> AppTest:
    at = AppTest.from_file(BRAIN3D, default_timeout=120).run()
    assert not at.exception
    return at


def _array(value: object) -> np.ndarray:
    """A plotly JSON array: a plain list, or plotly's base64 typed array ``{"dtype", "bdata"}``."""
    if isinstance(value, dict):
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
    return np.asarray(value)


def _shown_mesh(at: AppTest) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Vertices (V, 3), faces (F, 3) and vertex colours of the page's plotly chart, from the figure it sent."""
    [chart] = at.get("plotly_chart")
    [trace] = json.loads(chart.proto.spec)["data"]
    assert trace["type"] == "mesh3d"
    vertices = np.stack([_array(trace[a]).astype(np.float64) for a in "xyz"], axis=1)
    faces = np.stack([_array(trace[a]).astype(np.int64) for a in "ijk"], axis=1)
    return vertices, faces, list(trace["vertexcolor"])


def _made(root: Path) -> list[Path]:
    return sorted(p.parent for p in (root / "outputs" / "brain3d").glob("*/brain3d.json"))


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_viewer_figure_holds_the_mesh_vertices_faces_and_colours(tmp_path: Path) -> None:
    r = 0.6
    sdf = np.linalg.norm(grid_points(24).numpy(), axis=-1) - r  # a sphere of radius 0.6
    sphere = mesh_from_grid(-sdf, 0.0)
    colours = (sphere.vertices + 1.0) / 2.0  # (V, 3) a colour per vertex from its position
    path = Mesh(sphere.vertices, sphere.faces, colours).save(tmp_path / "sphere.glb")
    fig = mesh_figure(path, "sphere")
    on_disk = trimesh.load(path, force="mesh", process=False)  # read independently of load_mesh
    np.testing.assert_array_equal(figure_vertices(fig), np.asarray(on_disk.vertices, dtype=np.float64))
    np.testing.assert_allclose(np.linalg.norm(figure_vertices(fig), axis=1), r, atol=0.02)  # on the sphere
    [trace] = fig.data
    np.testing.assert_array_equal(np.stack([trace.i, trace.j, trace.k], axis=1), np.asarray(on_disk.faces))
    rgb = np.asarray(on_disk.visual.vertex_colors)[:, :3]  # (V, 3) uint8 as stored
    assert list(trace.vertexcolor) == [f"rgb({a},{b},{c})" for a, b, c in rgb]
    scene = fig.layout.scene
    assert scene.aspectmode == "data"
    assert not scene.xaxis.visible and not scene.yaxis.visible and not scene.zaxis.visible
    grey = mesh_figure(Mesh(sphere.vertices, sphere.faces))  # no colours: the renderer's grey
    assert set(grey.data[0].vertexcolor) == {"rgb(178,178,178)"}
    with pytest.raises(InvalidInputError, match="the mesh is empty"):
        mesh_figure(Mesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)))


def test_generate_from_a_test_trial_writes_and_shows_the_object(brain3d_env: DecodeWorkspace) -> None:
    before = _made(brain3d_env.root)
    at = _page()
    assert at.radio(key="b3_source").options == ["Test trial", "Upload betas", "Upload image"]
    subject = at.selectbox(key="b3_subject").value
    trials = at.selectbox(key="b3_trial")
    trials.set_value(trials.options[3])
    at.radio(key="b3_preset").set_value("tiny")
    at.button(key="b3_generate").click().run()
    assert not at.exception and not at.error
    [out] = sorted(set(_made(brain3d_env.root)) - set(before))
    for name in ("mesh.glb", "mesh.ply", "mesh.obj", "turntable.gif", "reference.png", "conditioning.npz"):
        assert (out / name).stat().st_size > 0, name
    record = json.loads((out / "brain3d.json").read_text())
    assert record["settings"]["stage1_steps"] == 12  # the tiny preset
    assert record["inputs"]["subject"] == subject and record["inputs"]["checkpoint"] == str(brain3d_env.run)

    # the page decoded exactly that trial: its conditioning equals one decoded here from the z-scored raw betas
    trial = int(trials.options[3].split()[1])
    raw = load_subject(brain3d_env.data, subject, zscore=False)
    train = raw.betas[~raw.is_test].astype(np.float64)
    sd = train.std(axis=0)
    betas = ((raw.betas[trial] - train.mean(axis=0)) / np.where(sd > 0, sd, 1.0)).astype(np.float32)  # (V,)
    bundle, _, decoder = open_run(brain3d_env.run, brain3d_env.data, subject)
    expected = decode_conditioning(bundle, subject, decoder, betas)
    saved = np.load(out / "conditioning.npz")
    np.testing.assert_allclose(saved["clip_tokens"], expected.clip_tokens, atol=1e-5)
    np.testing.assert_allclose(saved["lowlevel_image"], expected.lowlevel_image, atol=1e-5)

    # shown: the new object is selected, its mesh in the viewer, the turntable, reference and downloads
    assert at.selectbox(key="b3_output").value.startswith(str(out.relative_to(brain3d_env.root)))
    vertices, faces, colours = _shown_mesh(at)
    glb = trimesh.load(out / "mesh.glb", force="mesh", process=False)
    np.testing.assert_allclose(vertices, np.asarray(glb.vertices), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(faces, np.asarray(glb.faces))
    assert len(faces) == record["mesh"]["faces"] > 0
    rgb = np.asarray(glb.visual.vertex_colors)[:, :3]
    assert colours == [f"rgb({a},{b},{c})" for a, b, c in rgb]
    captions = [img.captions[0] for img in at.image]
    assert any(c.startswith("turntable") for c in captions) and any(c.startswith("reference image") for c in captions)
    assert [d.label for d in at.get("download_button")] == DOWNLOADS
    rows = dict(zip(at.dataframe[0].value["item"], at.dataframe[0].value["value"], strict=True))
    groups = region_groups(raw)
    for name, count in groups.counts().items():
        assert rows[f"voxels in {name}"] == str(count)
    n_low = int(groups.head_mask("lowlevel").sum())
    assert rows["low-level head (reference image)"] == f"V1, V2, V3, V4: {n_low} voxels"
    assert rows["semantic head (CLIP tokens)"] == f"higher: {int(groups.head_mask('semantic').sum())} voxels"


def test_untrained_parts_from_brain3d_json_are_labelled(brain3d_env: DecodeWorkspace) -> None:
    at = _page()
    if not find_brain3d_outputs(load_settings(brain3d_env.root, data_roots=[])):
        at.button(key="b3_generate").click().run()
    entry = find_brain3d_outputs(load_settings(brain3d_env.root, data_roots=[]))[0]
    untrained = json.loads((entry.path / "brain3d.json").read_text())["untrained"]
    assert "clip" in untrained  # the tiny data folder's CLIP is random
    at = _page()
    [warning] = at.warning
    assert warning.value.startswith(f"UNTRAINED: {', '.join(untrained)} use random weights")
    assert at.selectbox(key="b3_output").value.endswith(f"UNTRAINED {', '.join(untrained)}")
    assert any(c.endswith("· UNTRAINED") for img in at.image for c in img.captions)
    rows = dict(zip(at.dataframe[0].value["item"], at.dataframe[0].value["value"], strict=True))
    assert rows["CLIP"].startswith("UNTRAINED")


def test_generate_from_an_uploaded_image_uses_it_as_the_reference(brain3d_env: DecodeWorkspace) -> None:
    before = _made(brain3d_env.root)
    rng = np.random.default_rng(0)
    image = np.full((32, 32, 3), 255, np.uint8)
    image[8:24, 10:22] = rng.integers(0, 200, size=(16, 12, 3), dtype=np.uint8)  # an object on white
    at = _page()
    at.radio(key="b3_source").set_value("Upload image").run()
    at.file_uploader(key="b3_upload_image").upload("../my object.png", _png(image)).run()
    at.radio(key="b3_preset").set_value("tiny")
    at.button(key="b3_generate").click().run()
    assert not at.exception and not at.error
    [out] = sorted(set(_made(brain3d_env.root)) - set(before))
    assert out.name.startswith("my-object-")
    record = json.loads((out / "brain3d.json").read_text())
    assert Path(record["inputs"]["image"]).name == "my_object.png" and record["inputs"]["fmri"] is None
    np.testing.assert_array_equal(np.asarray(Image.open(out / "reference.png").convert("RGB")), image)
    assert load_mesh(out / "mesh.obj").faces.shape[0] == record["mesh"]["faces"] > 0


def test_bad_uploads_give_one_error_line(brain3d_env: DecodeWorkspace) -> None:
    at = _page()
    at.radio(key="b3_source").set_value("Upload betas").run()
    n_voxels = load_subject(brain3d_env.data, "subj01", zscore=False).n_voxels
    wrong, three = io.BytesIO(), io.BytesIO()
    np.save(wrong, np.zeros((1, 7), np.float32))  # 7 voxels: not the subject's
    np.save(three, np.ones((3, n_voxels), np.float32))  # three trials: one object needs one
    for name, content, problem in (("bad.npy", wrong.getvalue(), "bad.npy: betas of shape (1, 7); the decoder of "
                                    f"subj01 reads {n_voxels} voxels"),
                                   ("three.npy", three.getvalue(), "three.npy: 3 trials in the file"),
                                   ("big.npy", b"0" * (2**20 + 1), "over the 1 MB limit")):
        at.file_uploader(key="b3_upload_betas").upload(name, content).run()
        assert not at.exception
        assert len(at.error) == 1, name
        message = at.error[0].value
        assert problem in message and "\n" not in message, message
        assert str(brain3d_env.root) not in message  # the server path of the upload is not shown
        assert at.button(key="b3_generate").disabled
    at.radio(key="b3_source").set_value("Upload image").run()
    at.file_uploader(key="b3_upload_image").upload("broken.png", b"not a png").run()
    assert not at.exception and len(at.error) == 1
    assert at.error[0].value.startswith("broken.png: not a readable image") and "\n" not in at.error[0].value


def test_outputs_listing_and_opening_stay_inside_the_workspace(brain3d_env: DecodeWorkspace,
                                                                tmp_path: Path) -> None:
    other = load_settings(tmp_path / "ws", data_roots=[])
    broken = other.outputs / "brain3d" / "broken"
    broken.mkdir(parents=True)
    (broken / "brain3d.json").write_text("{not json")
    assert find_brain3d_outputs(other) == []  # a broken record is left out
    with pytest.raises(InvalidInputError, match=r"unreadable brain3d\.json"):
        open_output(other, broken)
    with pytest.raises(InvalidInputError, match="outside the folders this app may read"):
        open_output(other, brain3d_env.root / "outputs")
    with pytest.raises(InvalidInputError, match="not a Brain3D output folder"):
        open_output(other, other.outputs)

"""The Cases page and Diagnose's "Save as a case" under streamlit.testing.v1.AppTest, on a real SQLite case store in
a temporary runs folder. Every test fails on an exception of the page or a traceback in the server's log."""

from __future__ import annotations

import pytest

from breakhis_core.files import sha256
from breakhis_core.lab import audit
from breakhis_core.cases.records import Actor, Review
from breakhis_core.cases.service import CaseService
from test_app_pages import joined, open_page, pick, sample_upload
from test_cases_store import new_case

COLLEAGUE = Actor("dr.b@lab.example", "pathologist")


@pytest.fixture(autouse=True)
def no_traceback_in_the_server_log(caplog):
    """After each test: no record of the server's log (Streamlit's, the library's) carries a traceback."""
    yield
    with_traceback = [f"{r.name}: {r.getMessage()}" for r in caplog.records
                      if r.exc_info or r.exc_text or "Traceback" in r.getMessage()]
    assert with_traceback == []


@pytest.fixture
def case_runs(monkeypatch, tmp_path, sample_dir):
    """An empty runs folder with its own case store."""
    root = tmp_path / "runs"
    monkeypatch.setenv("BREAKHIS_RUNS", str(root))
    monkeypatch.setenv("BREAKHIS_DATA_ROOTS", str(sample_dir))
    monkeypatch.delenv("BREAKHIS_DATABASE_URL", raising=False)
    return root


def stored(root, *made) -> CaseService:
    service = CaseService.open(COLLEAGUE, root)
    for case in made:
        service.create_case(case)
    return service


def no_exception(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert "Traceback" not in joined(at)


def test_the_list_searches_filters_and_opens_a_case(case_runs):
    service = stored(case_runs, new_case(seeds=(1,), accession="S-100", patient="ALPHA-1"),
                     new_case(seeds=(2,), accession="S-200", patient="BETA-2"))
    opened = service.get_case("S-200")
    service.review("S-200", opened.version, Review(True, "malignant"))
    service.close()
    at = open_page("pages/cases.py")
    no_exception(at)
    assert at.dataframe[0].value["accession"].tolist() == ["S-200", "S-100"]
    at.text_input(key="cases_search").set_value("alpha").run()
    assert at.dataframe[0].value["accession"].tolist() == ["S-100"]
    at.text_input(key="cases_search").set_value("").run()
    at.selectbox(key="cases_status").set_value("reviewed").run()
    assert at.dataframe[0].value["accession"].tolist() == ["S-200"]
    at.selectbox(key="cases_status").set_value("signed").run()
    assert "No case matches" in joined(at)
    at.selectbox(key="cases_status").set_value("any").run()
    at.selectbox(key="cases_open_choice").set_value("S-100").run()
    at.button(key="cases_open").click().run()
    no_exception(at)
    assert at.query_params["case"] == "S-100"
    assert "Case S-100" in joined(at) and "Patient ALPHA-1" in joined(at)
    assert [c for image in at.get("image") for c in image.captions] == ["original"]  # saved without a heat map
    reads = [line for line in audit.read_audit(case_runs / "audit.jsonl")
             if line["event"] == "case" and line["user"] == "local user"]
    assert {line["action"] for line in reads} == {"list", "read"}


def test_a_link_opens_the_case_and_review_sign_and_addendum_work(case_runs):
    stored(case_runs, new_case(accession="R-1")).close()
    at = open_page("pages/cases.py")
    at.query_params["case"] = "R-1"
    at.run()
    no_exception(at)
    at.selectbox(key="case_1_label").set_value("benign").run()
    at.selectbox(key="case_1_type").set_value("F").run()
    at.text_area(key="case_1_comment").set_value("fibroadenoma").run()
    at.radio(key="case_1_agree").set_value("disagree").run()
    at.button(key="case_save").click().run()
    no_exception(at)
    assert "reviewed" in joined(at)
    at.button(key="case_sign").click().run()
    no_exception(at)
    assert "Signed by local user" in joined(at)
    case = CaseService.open(COLLEAGUE, case_runs).get_case("R-1")
    assert case.status == "signed" and case.review == Review(False, "benign", "F", "fibroadenoma")
    at.text_area(key="addendum_text_1").set_value("second look: still benign")
    next(b for b in at.get("button") if b.label == "Add addendum").click().run()  # the form's submit button
    no_exception(at)
    assert "Addendum by local user" in joined(at)


def test_a_second_reviewer_gets_a_conflict_and_keeps_the_text(case_runs):
    stored(case_runs, new_case(accession="C-1")).close()
    at = open_page("pages/cases.py")
    at.query_params["case"] = "C-1"
    at.run()
    at.selectbox(key="case_1_label").set_value("malignant").run()
    at.text_area(key="case_1_comment").set_value("my careful description").run()
    colleague = CaseService.open(COLLEAGUE, case_runs)  # saves first, from the same version
    colleague.review("C-1", 1, Review(True, "benign", None, "colleague's view"))
    colleague.close()
    at.button(key="case_save").click().run()
    no_exception(at)
    errors = [str(e.value) for e in at.error]
    assert any("was changed (by dr.b@lab.example" in e and "nothing of your change was saved" in e for e in errors)
    assert at.text_area(key="case_1_comment").value == "my careful description"
    at.button(key="case_reload").click().run()
    at.button(key="case_save").click().run()
    no_exception(at)
    case = CaseService.open(COLLEAGUE, case_runs).get_case("C-1")
    assert case.review.comment == "my careful description" and case.version == 3


def test_the_report_is_built_from_the_stored_case(case_runs):
    from breakhis_core.cases.report import case_report

    service = stored(case_runs, new_case(accession="REP-1"))
    case = service.get_case("REP-1")
    service.sign("REP-1", service.review("REP-1", case.version, Review(True, "malignant", "DC", "IDC")).version)
    at = open_page("pages/cases.py")
    at.query_params["case"] = "REP-1"
    at.run()
    no_exception(at)
    assert "Add addendum" in [b.label for b in at.get("button")]
    assert {b.label for b in at.get("download_button")} == {"Download report (HTML)", "Download report (PDF)"}
    page = case_report(service.get_case("REP-1"), service.image_path, service.heatmap)  # what the HTML button gives
    service.close()
    assert "REP-1" in page and "malignant (DC); agrees with the model; IDC" in page and "img1.png" in page
    assert "Signed by" in page and "dr.b@lab.example" in page and 'class="blank' not in page


def test_a_database_that_cannot_be_opened_is_a_clear_error_on_the_page(case_runs, monkeypatch, tmp_path):
    monkeypatch.setenv("BREAKHIS_DATABASE_URL", f"postgresql+psycopg://nobody@/breakhis?host={tmp_path / 'no-server'}")
    at = open_page("pages/cases.py")
    no_exception(at)
    assert any("cannot be reached" in str(e.value) and "BREAKHIS_DATABASE_URL" in str(e.value) for e in at.error)


@pytest.fixture
def model_runs(case_runs, tiny_run):
    """``case_runs`` with the tiny trained run (linked) as the active model."""
    from breakhis_core.runs import default_model

    case_runs.mkdir(parents=True)
    (case_runs / tiny_run.name).symlink_to(tiny_run, target_is_directory=True)
    default_model.set_default(tiny_run.name, "finetuned", case_runs)
    return case_runs


def test_diagnose_saves_the_upload_as_a_case_and_refuses_a_taken_accession(model_runs, sample_files, monkeypatch,
                                                                            tmp_path):
    at = open_page("pages/diagnose.py")
    images = pick(sample_files, 40, 100)
    at.file_uploader(key="diagnose_files").set_value([sample_upload(p) for p in images]).run()
    no_exception(at)
    monkeypatch.setenv("BREAKHIS_DATABASE_URL", f"postgresql+psycopg://nobody@/breakhis?host={tmp_path / 'down'}")
    at.text_input(key="diagnose_accession").set_value("D-1")
    at.text_input(key="diagnose_patient").set_value("P-77")
    next(b for b in at.get("button") if b.label == "Save case").click().run()
    no_exception(at)
    assert any("cannot be reached" in str(e.value) and "the images are kept" in str(e.value) for e in at.error)
    files = sorted(p.name for p in (model_runs / "cases" / "images").rglob("*.png") if ".heatmap-" not in p.name)
    assert files == sorted(f"{sha256(p.read_bytes())}.png" for p in images)  # on disk for the retry
    monkeypatch.delenv("BREAKHIS_DATABASE_URL")
    next(b for b in at.get("button") if b.label == "Save case").click().run()
    no_exception(at)
    assert "Saved as case D-1 (2 image(s); 2 image(s) were already stored" not in joined(at)
    assert "Saved as case D-1 (2 image(s))" in joined(at)
    reader = CaseService.open(COLLEAGUE, model_runs)
    case = reader.get_case("D-1")
    assert case.patient_ref == "P-77" and [i.name for i in case.images] == [p.name for p in images]
    assert case.prediction.model_id.endswith(":finetuned") and all(i.prediction for i in case.images)
    assert all(reader.heatmap(image) is not None for image in case.images)  # the Grad-CAM maps were stored
    reader.close()
    next(b for b in at.get("button") if b.label == "Save case").click().run()
    assert any("accession number D-1 is already case" in str(e.value) for e in at.error)
    assert "Open case D-1" in [link.label for link in at.get("page_link")]


def test_train_exports_the_reviewed_cases_and_offers_them_as_a_data_set(case_runs):
    service = stored(case_runs, new_case(seeds=(1, 2), accession="T-1", patient="P-1"),
                     new_case(seeds=(3,), accession="T-2", patient="P-2"))
    first = service.get_case("T-1")
    service.review("T-1", first.version, Review(True, "malignant"))
    service.close()
    at = open_page("pages/train.py")
    no_exception(at)
    at.button(key="train_export_cases").click().run()
    no_exception(at)
    assert any("2 image(s) of 1 case(s)" in str(s.value) for s in at.success)
    offered = at.selectbox(key="train_data").options
    exported = sorted((case_runs / "cases" / "datasets").glob("reviewed-*.csv"))
    assert len(exported) == 1 and any(exported[0].name in option for option in offered)


def test_compare_evaluates_both_models_on_reviewed_cases_they_never_trained_on(model_runs, tiny_run, sample_files):
    from breakhis_core.runs import registry
    from breakhis_core.cases.evaluation import evaluate_on_cases
    from breakhis_core.cases.records import NewCase, NewImage
    from breakhis_core.inference.predict import Predictor

    service = CaseService.open(Actor("admin@lab.example", "admin"), model_runs)
    made = []
    for number, path in enumerate(sample_files[:6]):
        label = "malignant" if "_M_" in path.name else "benign"
        case = service.create_case(NewCase(f"P-{number}", (NewImage(path.name, path.read_bytes(), None),), f"E-{number}"))
        made.append(service.review(case.id, case.version, Review(None, label)))
    at = open_page("pages/compare.py")
    at.button(key="compare_cases").click().run()
    no_exception(at)
    table = at.dataframe[-1].value
    assert table.loc["images / cases"].tolist() == ["6 / 6", "6 / 6"]
    assert table.loc["cases left out (trained on)"].tolist() == ["0", "0"]
    run = registry.load_run(tiny_run)
    trained_on = [{"id": made[0].id, "accession": "E-0", "patient_ref": "P-0", "images": [made[0].images[0].sha256]}]
    result = evaluate_on_cases(Predictor.from_run(run, "finetuned"), "tiny:finetuned", service.reviewed_cases("evaluate"),
                               trained_on, service.image_path, n_bootstrap=0)
    service.close()
    assert (result.n_cases, result.n_images, result.left_out) == (5, 5, 1)
    assert result.metrics["overall"]["n_images"] == 5 and result.metrics["overall"]["n_patients"] == 5


def test_a_case_whose_image_file_is_missing_says_so_and_shows_the_rest(case_runs):
    service = stored(case_runs, new_case(seeds=(1, 2), accession="M-1"))
    case = service.get_case("M-1")
    service.image_path(case.images[0]).unlink()
    service.close()
    at = open_page("pages/cases.py")
    at.query_params["case"] = "M-1"
    at.run()
    no_exception(at)
    assert any("cannot be shown" in str(w.value) and "Restore the cases/images folder" in str(w.value) for w in at.warning)
    assert [c for image in at.get("image") for c in image.captions] == ["original"]  # the other image


def signed_in(email: str, page: str = "pages/cases.py"):
    """A session signed in as ``email`` (an ``[auth]`` section, AppTest's ``st.user``) on ``page``."""
    from streamlit.testing.v1 import AppTest

    from test_app_pages import REPO, TIMEOUT

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    at.secrets["auth"] = {"redirect_uri": "http://127.0.0.1/oauth2callback", "cookie_secret": "x", "client_id": "x",
                          "client_secret": "x", "server_metadata_url": "http://127.0.0.1/.well-known"}
    at.user = {"is_logged_in": True, "email": email}
    at.run()
    at.switch_page(page)
    return at


def test_a_link_opens_the_case_for_each_role_as_far_as_it_may(case_runs, monkeypatch, tmp_path):
    roles = tmp_path / "roles.toml"
    roles.write_text('pathologist = ["dr.c@lab.example"]\nviewer = ["clerk@lab.example"]\n')
    monkeypatch.setenv("BREAKHIS_ROLES", str(roles))
    stored(case_runs, new_case(accession="L-1")).close()
    viewer = signed_in("clerk@lab.example")
    viewer.query_params["case"] = "L-1"
    viewer.run()
    no_exception(viewer)
    assert "Case L-1" in joined(viewer) and "Reviewing and signing need the pathologist role" in joined(viewer)
    assert "case_save" not in [b.key for b in viewer.get("button")]
    pathologist = signed_in("dr.c@lab.example")
    pathologist.query_params["case"] = "L-1"
    pathologist.run()
    no_exception(pathologist)
    pathologist.selectbox(key="case_1_label").set_value("malignant").run()
    pathologist.button(key="case_save").click().run()
    no_exception(pathologist)
    with pytest.raises(ValueError, match="Could not find a navigation page"):  # Cases is not listed without a role
        signed_in("someone@else.example")
    stranger = signed_in("someone@else.example", page="pages/home.py")
    stranger.query_params["case"] = "L-1"
    stranger.run()
    assert "Case L-1" not in joined(stranger) and any("needs the viewer role" in str(e.value) for e in stranger.error)
    lines = [line for line in audit.read_audit(case_runs / "audit.jsonl") if line["event"] == "case"]
    assert ("read", "clerk@lab.example", "viewer") in {(l["action"], l["user"], l["role"]) for l in lines}
    assert ("review", "dr.c@lab.example", "pathologist") in {(l["action"], l["user"], l["role"]) for l in lines}
    assert not any(line["user"] == "someone@else.example" for line in lines)

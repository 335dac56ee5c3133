"""The course's house-price experiment on the real Kaggle files, and predicting with a run."""

from __future__ import annotations

import csv
import os
import statistics
from pathlib import Path

import pytest

import divekit as dk
from divekit.cli import main
from divekit.engine import seed_everything
from divekit.experiment import trainer_for
from divekit.recipes.kfold import HOUSE_BOOK, HOUSE_LINEAR, cross_validate

DATA = Path(os.environ.get("DIVEKIT_DATA") or "-") / "kaggle-house"
pytestmark = pytest.mark.skipif(not (DATA / "kaggle_house_pred_train.csv").is_file(),
                                reason="needs DIVEKIT_DATA/kaggle-house")


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_linear_model_5_fold_log_rmse_reaches_the_books():
    config = HOUSE_LINEAR
    data = dk.load_data(config.data, config.batch_size, **config.data_options)

    def linear(fold):
        seed_everything(0)
        return dk.create_model(config.model, fold)

    result = cross_validate(linear, data, 5, lambda: trainer_for(config, progress=False))
    valid = [fold["valid_rmse"] for fold in result["folds"]]
    assert len(valid) == 5 and all(0.05 < v < 0.25 for v in valid)
    assert result["mean"]["valid_rmse"] <= HOUSE_BOOK["valid"]  # the book: 0.170
    assert result["mean"]["valid_rmse"] == pytest.approx(statistics.fmean(valid))


@pytest.mark.slow
def test_recipe_prints_both_models_and_writes_a_kaggle_submission(tmp_path, capsys):
    out = tmp_path / "house"
    assert main(["recipe", "run", "kaggle-house-kfold", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    means = {label: float(printed.split(f"{label}_mean_valid_log_rmse: ")[1].split()[0])
             for label in ("linear", "mlp")}
    assert printed.count("fold 5: train log-rmse") == 2
    assert means["linear"] <= HOUSE_BOOK["valid"] and means["mlp"] < means["linear"]

    submission = tmp_path / "submission.csv"
    assert main(["predict", str(out / "mlp"), "--data", "kaggle-house",
                 "--out", str(submission)]) == 0
    rows = read_csv(submission)
    test_ids = [row["Id"] for row in read_csv(DATA / "kaggle_house_pred_test.csv")]
    assert list(rows[0]) == ["Id", "SalePrice"] and [r["Id"] for r in rows] == test_ids
    prices = [float(row["SalePrice"]) for row in rows]
    sold = [float(row["SalePrice"]) for row in read_csv(DATA / "kaggle_house_pred_train.csv")]
    # Predicted prices of the unseen houses are distributed like the sold ones.
    assert min(prices) > 0.5 * min(sold) and max(prices) < 1.5 * max(sold)
    assert statistics.median(prices) == pytest.approx(statistics.median(sold), rel=0.1)


def test_train_and_predict_on_your_own_csv(tmp_path, capsys):
    rows = read_csv(DATA / "kaggle_house_pred_train.csv")[:300]
    table = tmp_path / "houses.csv"
    columns = ["Id", "GrLivArea", "OverallQual", "Neighborhood", "SalePrice"]
    table.write_text("\n".join([",".join(columns)] + [",".join(r[c] for c in columns)
                                                      for r in rows]) + "\n")
    out = tmp_path / "run"
    assert main(["train", "linear-regression", "--data", "csv", "-D", f"path={table}",
                 "-D", "target=SalePrice", "-D", "id_column=Id", "-D", "log_target=true",
                 "--optimizer", "adam", "--lr", "0.1", "--epochs", "100", "--batch-size", "32",
                 "--out", str(out), "--quiet"]) == 0
    rmse = float(capsys.readouterr().out.split("rmse ")[1].split()[0])
    held_out = dk.load_data("csv", path=str(table), target="SalePrice", log_target=True).test[1]
    # Three features explain most of the log price: far below predicting the mean.
    assert rmse < 0.6 * held_out.std(correction=0).item()

    new = tmp_path / "new.csv"
    new.write_text("Id,GrLivArea,OverallQual,Neighborhood\n9001,1500,6,NAmes\n"
                   "9002,3000,9,NoRidge\n")
    assert main(["predict", str(out), str(new), "--out", str(tmp_path / "p.csv")]) == 0
    predicted = read_csv(tmp_path / "p.csv")
    assert [r["Id"] for r in predicted] == ["9001", "9002"]
    assert float(predicted[1]["SalePrice"]) > float(predicted[0]["SalePrice"]) > 50_000


@pytest.mark.parametrize("options, message", [
    (["-D", "target=Nope"], "has no column 'Nope'"),
    (["-D", "target=Neighborhood"], "target column 'Neighborhood' must be numeric"),
])
def test_a_bad_target_is_one_line(tmp_path, capsys, options, message):
    path = DATA / "kaggle_house_pred_train.csv"
    code = main(["train", "linear-regression", "--data", "csv", "-D", f"path={path}", *options,
                 "--out", str(tmp_path / "r")])
    error = capsys.readouterr().err
    assert code == 2 and message in error and error.count("\n") == 1

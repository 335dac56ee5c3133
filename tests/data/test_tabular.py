"""Tabular data: the course's preprocessing on Kaggle house prices and on tables tests write."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import pytest
import torch

import divekit as dk
from divekit.data.tabular import TabularPreprocessor
from divekit.errors import DivekitError

DATA = os.environ.get("DIVEKIT_DATA")
HOUSE = Path(DATA or "-") / "kaggle-house" / "kaggle_house_pred_train.csv"
needs_house = pytest.mark.skipif(not HOUSE.is_file(), reason="needs DIVEKIT_DATA/kaggle-house")


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_table(path: Path, header: list[str], rows: list[list]) -> Path:
    path.write_text("\n".join(",".join(map(str, row)) for row in [header, *rows]) + "\n")
    return path


@pytest.fixture
def table(tmp_path: Path) -> Path:
    rows = [[1, 2.0, "a", 10.0], [2, 4.0, "b", 20.0], [3, "", "a", 30.0], [4, 6.0, "", 40.0],
            [5, 8.0, "b", 50.0], [6, 10.0, "c", 60.0]]
    return write_table(tmp_path / "t.csv", ["Id", "size", "colour", "price"], rows)


def test_numeric_columns_are_standardised_with_training_rows_then_filled_with_zero(table):
    data = dk.load_data("csv", path=str(table), target="price", id_column="Id", test_size=0)
    x = data.train[0]
    names = data.preprocessor.feature_names
    assert names == ["size", "colour=a", "colour=b", "colour=c", "colour=missing"]
    known = [2.0, 4.0, 6.0, 8.0, 10.0]  # row 3 is missing
    mean = sum(known) / 5
    std = math.sqrt(sum((v - mean) ** 2 for v in known) / 4)  # pandas' sample deviation
    expected = [(2 - mean) / std, (4 - mean) / std, 0.0, (6 - mean) / std, (8 - mean) / std,
                (10 - mean) / std]
    torch.testing.assert_close(x[:, 0], torch.tensor(expected))
    one_hot = [[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0]]
    torch.testing.assert_close(x[:, 1:], torch.tensor(one_hot, dtype=torch.float32))
    torch.testing.assert_close(data.train[1].ravel(), torch.arange(10.0, 61.0, 10.0))


def test_other_rows_get_the_training_transform_and_unseen_categories_encode_as_zeros(table):
    data = dk.load_data("csv", path=str(table), target="price", id_column="Id", test_size=0)
    import pandas as pd

    new = pd.DataFrame({"Id": [7, 8], "size": [6.0, None], "colour": ["zebra", "b"]})
    x = data.inputs_of(new, "new rows")
    std = torch.tensor([2.0, 4.0, 6.0, 8.0, 10.0]).std().item()
    torch.testing.assert_close(x, torch.tensor([[0.0, 0, 0, 0, 0], [0.0, 0, 1, 0, 0]]))
    x = data.inputs_of(pd.DataFrame({"size": [12.0], "colour": ["a"]}), "new rows")
    assert x[0, 0].item() == pytest.approx((12 - 6) / std)
    with pytest.raises(DivekitError, match="lacks the column.*colour"):
        data.inputs_of(pd.DataFrame({"size": [1.0]}), "new rows")
    with pytest.raises(DivekitError, match="'size' is numeric .* row 1 holds 'big'"):
        data.inputs_of(pd.DataFrame({"size": ["big"], "colour": ["a"]}), "new rows")


def test_the_test_split_is_held_out_of_the_fit(table):
    data = dk.load_data("csv", path=str(table), target="price", test_size=1 / 3, split_seed=3)
    assert len(data.train[0]) == 4 and len(data.test[0]) == 2
    train_prices = set(data.train[1].ravel().tolist())
    held_out = set(data.test[1].ravel().tolist())
    assert not train_prices & held_out and train_prices | held_out == {10.0 * i for i in
                                                                       range(1, 7)}
    # The standardised training column has mean 0 over its non-missing rows.
    sizes = {10.0: 2.0, 20.0: 4.0, 30.0: None, 40.0: 6.0, 50.0: 8.0, 60.0: 10.0}
    known = [sizes[p] for p in data.train[1].ravel().tolist() if sizes[p] is not None]
    mean, std = data.preprocessor.numeric["size"]
    assert mean == pytest.approx(sum(known) / len(known))


@pytest.mark.parametrize("rows, options, message", [
    ([[1, 2.0]], {"target": "price"}, "has no column 'price'; its columns are: a, b"),
    ([[1, "cheap"], [2, 3]], {"target": "b"}, "target column 'b' must be numeric .* row 1 holds"),
    ([[1, ""], [2, 3]], {"target": "b"}, "data row 1 is empty"),
    ([[1, 0.0], [2, 3]], {"target": "b", "log_target": True}, "positive targets.* row 1"),
    ([[1, 2.0], [2, 3]], {"target": "b", "test_size": 1.5}, "test_size must be a fraction"),
])
def test_bad_tables_get_one_line_errors(tmp_path, rows, options, message):
    path = write_table(tmp_path / "bad.csv", ["a", "b"], rows)
    with pytest.raises(DivekitError, match=message) as error:
        dk.load_data("csv", path=str(path), **options)
    assert "\n" not in str(error.value)


def test_missing_empty_and_header_only_files_and_missing_options(tmp_path):
    with pytest.raises(DivekitError, match="needs -D path=FILE.csv and -D target=COLUMN"):
        dk.load_data("csv")
    with pytest.raises(DivekitError, match="does not exist"):
        dk.load_data("csv", path=str(tmp_path / "none.csv"), target="y")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DivekitError, match="is empty"):
        dk.load_data("csv", path=str(tmp_path / "empty.csv"), target="y")
    (tmp_path / "header.csv").write_text("x,y\n")
    with pytest.raises(DivekitError, match="no data rows"):
        dk.load_data("csv", path=str(tmp_path / "header.csv"), target="y")


def test_a_fold_refits_the_numbers_on_its_own_rows_and_keeps_the_one_hot_layout(table):
    data = dk.load_data("csv", path=str(table), target="price", id_column="Id", test_size=0)
    fold = data.fold(torch.tensor([0, 1, 4, 5]), torch.tensor([2, 3]))
    mean, std = fold.preprocessor.numeric["size"]
    assert (mean, std) == pytest.approx((6.0, torch.tensor([2.0, 4.0, 8.0, 10.0]).std().item()))
    assert fold.preprocessor.feature_names == data.preprocessor.feature_names
    torch.testing.assert_close(fold.test[1].ravel(), torch.tensor([30.0, 40.0]))
    assert fold.test[0][1, 0].item() == pytest.approx(0.0)  # size 6 is this fold's mean
    data.hold_out(2, seed=0)
    with pytest.raises(DivekitError, match="needs all training rows"):
        data.fold(torch.tensor([0, 1]), torch.tensor([2]))


def test_preprocessor_treats_an_all_missing_column_as_categorical_missing():
    import pandas as pd

    frame = pd.DataFrame({"x": [None, None], "n": [1.0, 1.0]})
    fitted = TabularPreprocessor.fit(frame)
    x = fitted.transform(frame)
    assert fitted.numeric["n"] == (1.0, 1.0)  # constant: only shifted
    torch.testing.assert_close(x[:, -1], torch.zeros(2))


@needs_house
def test_kaggle_house_matches_the_published_files():
    data = dk.load_data("kaggle-house", test_size=0)
    rows = rows_of(HOUSE)
    assert len(rows) == 1460 and len(data.train[0]) == 1460 and len(data.unlabelled) == 1459
    prices = torch.tensor([float(r["SalePrice"]) for r in rows])
    torch.testing.assert_close(data.train[1].ravel(), prices.log())
    # Every categorical column is one-hot: exactly one 1 per row in its block.
    names = data.preprocessor.feature_names
    zoning = [i for i, n in enumerate(names) if n.startswith("MSZoning=")]
    assert (data.train[0][:, zoning].sum(1) == 1).all()
    # LotFrontage: standardised by the training rows' statistics, missing values 0.
    frontage = [float(r["LotFrontage"]) if r["LotFrontage"] != "NA" else None for r in rows]
    known = torch.tensor([v for v in frontage if v is not None], dtype=torch.float64)
    column = data.train[0][:, names.index("LotFrontage")]
    for i in (0, 7, 12):  # row 7 (Id 8) has NA
        expected = 0.0 if frontage[i] is None else (frontage[i] - known.mean()) / known.std()
        assert column[i].item() == pytest.approx(float(expected), abs=1e-5)
    assert frontage[7] is None


@needs_house
def test_kaggle_house_holds_out_a_seeded_fifth_by_default():
    data = dk.load_data("kaggle-house")
    assert (len(data.train[0]), len(data.test[0])) == (1168, 292)
    again = dk.load_data("kaggle-house")
    torch.testing.assert_close(data.test[1], again.test[1])


def test_kaggle_house_says_where_its_files_go(tmp_path):
    with pytest.raises(DivekitError, match="kaggle_house_pred_train.csv .* into"):
        dk.load_data("kaggle-house", data_dir=str(tmp_path))

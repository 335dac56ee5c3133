"""Tabular data from CSV files: the course's preprocessing (2.2 Data Preprocessing) and its
Kaggle house-price experiment (5.7 Predicting House Prices on Kaggle).

A table's columns are numeric or categorical (pandas decides from the values). The course's
preprocessing, fitted on the training rows only and replayed on every other row:

1. standardise each numeric column with the training rows' mean and standard deviation
   (pandas' sample deviation, as the book computes it; a constant column is only shifted),
   then fill its missing values with 0, the training mean;
2. one-hot encode each categorical column over the categories seen in the training rows, with
   "missing" as one more category; a category the training rows never had encodes as all
   zeros;
3. predict the logarithm of the target when ``log_target`` is set (house prices: the error
   that matters is relative, and the competition scores the RMSE of log prices).

The book fits step 1 on the training and test rows together; here no statistic of a row that
is predicted or evaluated enters the fit. During k-fold cross-validation each fold refits it
on its own training part (:meth:`TabularData.fold`).
"""

from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from divekit.data.paths import data_root
from divekit.data.registry import DataModule, register_dataset
from divekit.engine.checkpoint import write_atomically
from divekit.errors import DivekitError

HOUSE_FILES = ("kaggle_house_pred_train.csv", "kaggle_house_pred_test.csv")
MISSING = "missing"


@dataclass
class TabularPreprocessor:
    """The course's preprocessing, fitted on training rows: see the module docstring.

    Attributes:
        numeric: ``{column: (mean, std)}`` of the training rows.
        categories: ``{column: [category, ...]}`` seen in the training rows, in sorted order.
        columns: every input column in the training file's order.
    """

    numeric: dict[str, tuple[float, float]] = field(default_factory=dict)
    categories: dict[str, list[str]] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)

    @classmethod
    def fit(cls, frame) -> TabularPreprocessor:
        """Statistics and categories of the input columns of ``frame`` (a DataFrame)."""
        from pandas.api.types import is_numeric_dtype

        numeric, categories = {}, {}
        for column in frame.columns:
            values = frame[column]
            if is_numeric_dtype(values) and values.dtype != bool:
                mean, std = float(values.mean()), float(values.std())
                numeric[column] = (0.0 if math.isnan(mean) else mean,
                                   std if std > 0 else 1.0)  # NaN std fails the test too
            else:
                categories[column] = sorted(str(v) for v in values.dropna().unique())
        return cls(numeric, categories, list(frame.columns))

    @property
    def feature_names(self) -> list[str]:
        """The model's input features: numeric columns, then ``column=category`` one-hots."""
        names = []
        for column in self.columns:
            if column in self.numeric:
                names.append(column)
            else:
                names += [f"{column}={c}" for c in (*self.categories[column], MISSING)]
        return names

    def transform(self, frame, source: str = "the table") -> torch.Tensor:
        """``(rows, features)`` float32 inputs of ``frame`` (a DataFrame with the fitted
        columns), in the order of :attr:`feature_names`."""
        import numpy as np
        import pandas as pd

        absent = [column for column in self.columns if column not in frame.columns]
        if absent:
            raise DivekitError(f"{source} lacks the column(s) {', '.join(absent[:5])} that the "
                               f"model was trained on; give a table with the training columns")
        blocks = []
        for column in self.columns:
            values = frame[column]
            if column in self.numeric:
                mean, std = self.numeric[column]
                numbers = _numbers(values, column, source)
                blocks.append(np.nan_to_num((numbers - mean) / std, nan=0.0)[:, None])
            else:
                known = [*self.categories[column], MISSING]
                text = values.astype(object).where(values.notna(), MISSING).astype(str)
                unseen = ~text.isin(known)
                codes = pd.Categorical(text.mask(unseen), categories=known).codes  # unseen: -1
                one_hot = np.zeros((len(frame), len(known) + 1), dtype=np.float32)
                one_hot[np.arange(len(frame)), codes] = 1.0
                one_hot = one_hot[:, :-1]  # column -1 took the unseen categories
                blocks.append(one_hot)
        matrix = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(frame), 0))
        return torch.from_numpy(matrix.astype(np.float32))


@dataclass(repr=False)  # DataModule's summary, not every row
class TabularData(DataModule):
    """A table as a regression :class:`DataModule`, with what predicting new rows needs.

    Attributes:
        preprocessor: the preprocessing fitted on the training split's rows.
        target: the predicted column; ``log_target``: the model predicts its logarithm.
        id_column: a column that names rows (not a feature), written beside predictions.
        train_rows: the training split's raw rows (a DataFrame), which k-fold refits on.
        unlabelled: rows to predict (the Kaggle test file), raw, or ``None``.
    """

    preprocessor: TabularPreprocessor = field(default_factory=TabularPreprocessor)
    target: str = ""
    log_target: bool = False
    id_column: str | None = None
    train_rows: Any = None
    unlabelled: Any = None

    def fold(self, train_index: torch.Tensor, valid_index: torch.Tensor) -> TabularData:
        """One cross-validation fold of the training split: its training rows refit the
        numeric statistics, and the validation rows are the fold's test split. The one-hot
        layout (the categories) stays the training split's, so every fold's model takes the
        same features; a category seen only in the validation rows trains no weight."""
        if self.train_rows is None:
            raise DivekitError("k-fold cross-validation needs all training rows: load the "
                               "data without a validation split (val_size=0)")
        rows = self.train_rows
        train, valid = rows.iloc[train_index.tolist()], rows.iloc[valid_index.tolist()]
        preprocessor = dataclasses.replace(
            TabularPreprocessor.fit(train[self.preprocessor.columns]),
            categories=self.preprocessor.categories)
        targets = self.train[1]
        return dataclasses.replace(self, preprocessor=preprocessor, train_rows=train, val=None,
                        train=(preprocessor.transform(train), targets[train_index]),
                        test=(preprocessor.transform(valid), targets[valid_index]))

    @property
    def model_options(self) -> dict[str, float]:
        """A regression model's initial output: the training targets' mean."""
        return {"output_bias": self.train[1].mean().item()}

    def hold_out(self, val_size: float | int, seed: int) -> None:
        super().hold_out(val_size, seed)
        self.train_rows = None  # no longer the rows of the training split

    def inputs_of(self, frame, source: str) -> torch.Tensor:
        """Model inputs of raw rows (a DataFrame) by the fitted preprocessing."""
        return self.preprocessor.transform(frame, source)

    def values(self, outputs: torch.Tensor) -> torch.Tensor:
        """Predictions in the target's own units (prices, not log prices)."""
        outputs = outputs.reshape(len(outputs), -1)[:, 0].double()
        return outputs.exp() if self.log_target else outputs

    def write_predictions(self, frame, outputs: torch.Tensor, path: Path) -> Path:
        """``id,target`` rows (the Kaggle submission format) for ``frame``'s rows."""
        ids = frame[self.id_column].tolist() if self.id_column in frame.columns \
            else list(range(1, len(frame) + 1))
        lines = [f"{self.id_column or 'row'},{self.target}"]
        lines += [f"{i},{value:.6f}" for i, value in zip(ids, self.values(outputs).tolist(),
                                                           strict=True)]
        write_atomically(Path(path), "\n".join(lines) + "\n")
        return Path(path)


def _numbers(values, column: str, source: str):
    import numpy as np
    import pandas as pd

    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna() & values.notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DivekitError(f"{source}: column {column!r} is numeric in the training rows but "
                           f"row {row + 1} holds {values.iloc[row]!r}")
    return numbers.to_numpy(dtype=np.float64)


def read_table(path: Path, what: str = "table"):
    """A CSV file as a DataFrame (``NA`` and empty cells are missing values), or a one-line
    error naming the file."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DivekitError(f"{what} {path} does not exist; give the path of a CSV file")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DivekitError(f"{path} is empty; a CSV file needs a header row and data rows") \
            from None
    except (pd.errors.ParserError, UnicodeDecodeError, csv.Error) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DivekitError(f"{path} is not a readable CSV file ({first})") from None
    if frame.empty:
        raise DivekitError(f"{path} has a header but no data rows")
    return frame


def tabular_data(
    name: str, path: Path, target: str, *, test_path: Path | None = None,
    id_column: str | None = None, log_target: bool = False, test_size: float = 0.2,
    split_seed: int = 0,
) -> TabularData:
    """A regression table: ``test_size`` of the labelled rows (a seeded choice) is the test
    split, and the preprocessing is fitted on the rest; ``test_size=0`` keeps every row for
    training and evaluates on the training rows (a final model to predict with).

    Args:
        path: the labelled CSV file; ``target``: its column to predict.
        test_path: a CSV file of rows to predict (no target column), kept raw as
            :attr:`TabularData.unlabelled`.
        id_column: a column naming the rows, left out of the features.
    """
    frame = read_table(path)
    if target not in frame.columns:
        raise DivekitError(f"{path} has no column {target!r}; its columns are: "
                           f"{', '.join(map(str, frame.columns[:12]))}"
                           f"{', ...' if len(frame.columns) > 12 else ''}")
    if id_column is not None and id_column not in frame.columns:
        raise DivekitError(f"{path} has no id column {id_column!r}")
    targets = _targets(frame[target], target, path, log_target)
    inputs = [c for c in frame.columns if c not in (target, id_column)]
    if not inputs:
        raise DivekitError(f"{path} has no input columns besides {target!r}")
    if isinstance(test_size, bool) or not (0 <= test_size < 1):
        raise DivekitError(f"test_size must be a fraction in [0, 1), got {test_size!r}")
    order = torch.randperm(len(frame), generator=torch.Generator().manual_seed(split_seed))
    num_test = round(test_size * len(frame))
    if test_size and not 1 <= num_test < len(frame) - 1:
        raise DivekitError(f"test_size {test_size} leaves no rows for one split of "
                           f"{len(frame)}; give a larger table or another fraction")
    test_index, train_index = (order[:num_test], order[num_test:]) if num_test else \
        (torch.arange(len(frame)), torch.arange(len(frame)))
    train_rows = frame.iloc[train_index.tolist()]
    preprocessor = TabularPreprocessor.fit(train_rows[inputs])
    test_rows = frame.iloc[test_index.tolist()]
    unlabelled = read_table(test_path, "test file") if test_path is not None else None
    return TabularData(
        name, train=(preprocessor.transform(train_rows[inputs], str(path)), targets[train_index]),
        test=(preprocessor.transform(test_rows[inputs], str(path)), targets[test_index]),
        task="regression", preprocessor=preprocessor, target=target, log_target=log_target,
        id_column=id_column, train_rows=train_rows, unlabelled=unlabelled,
    )


def _targets(values, column: str, path: Path, log_target: bool) -> torch.Tensor:
    import numpy as np
    import pandas as pd

    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        found = "is empty" if pd.isna(values.iloc[row]) else f"holds {values.iloc[row]!r}"
        raise DivekitError(f"{path}: target column {column!r} must be numeric in every row, but "
                           f"data row {row + 1} {found}")
    numbers = numbers.to_numpy(dtype=np.float64)
    if log_target:
        if (numbers <= 0).any():
            row = int(np.flatnonzero(numbers <= 0)[0])
            raise DivekitError(f"{path}: log_target needs positive targets, but data row "
                               f"{row + 1} has {column} = {numbers[row]}")
        numbers = np.log(numbers)
    return torch.tensor(numbers, dtype=torch.float32).reshape(-1, 1)


@register_dataset("kaggle-house", section="5.7 Predicting House Prices on Kaggle",
                  files=HOUSE_FILES)
def kaggle_house(data_dir: str | None = None, test_size: float = 0.2,
                 split_seed: int = 0) -> TabularData:
    """Kaggle house prices (Ames): 1,460 sold houses, 79 features, log of the sale price."""
    folder = data_root(data_dir) / "kaggle-house"
    train, test = (folder / name for name in HOUSE_FILES)
    if not train.is_file():
        raise DivekitError(f"kaggle-house needs {train}: download kaggle_house_pred_train.csv "
                           f"and kaggle_house_pred_test.csv (the book's DATA_HUB or Kaggle's "
                           f"'House Prices' competition) into {folder}")
    return tabular_data("kaggle-house", train, "SalePrice", id_column="Id", log_target=True,
                        test_path=test if test.is_file() else None, test_size=test_size,
                        split_seed=split_seed)


@register_dataset("csv", section="2.2 Data Preprocessing")
def csv_table(data_dir: str | None = None, path: str = "", target: str = "",
              test_path: str | None = None, id_column: str | None = None,
              log_target: bool = False, test_size: float = 0.2,
              split_seed: int = 0) -> TabularData:
    """Your own CSV table for regression: -D path=FILE -D target=COLUMN."""
    if not path or not target:
        raise DivekitError("the csv dataset needs -D path=FILE.csv and -D target=COLUMN "
                           "(the column to predict)")
    return tabular_data("csv", Path(path), target, test_path=test_path and Path(test_path),
                        id_column=id_column, log_target=log_target, test_size=test_size,
                        split_seed=split_seed)

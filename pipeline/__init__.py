"""Pipeline stages as plain functions, the artifact layout and the dataset."""

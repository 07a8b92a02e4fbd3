"""`python -m data_pipeline.phantoms --out DIR --n 8`: write phantoms and reports for a person."""

from data_pipeline.phantoms.preview import main

main()

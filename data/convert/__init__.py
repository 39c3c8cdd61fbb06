"""
Converters from public datasets, saved locally, to this project's formats: multi-trace JSONL for
SSFT (data/traces.py) and RL prompts for GFPO and evaluation (data/prompts.py).

    s1k    simplescaling/s1K-1.1 -> multi-trace JSONL, two traces per question (DeepSeek-R1, Gemini)
    merge  add more teachers' traces (the paper's GPT-OSS and Claude traces) to a multi-trace file
    dapo   BytedTsinghua-SIA/DAPO-Math-17k -> math prompts with answers
    code   livecodebench/code_generation_lite or PrimeIntellect/INTELLECT-2-RL-Dataset -> code
           prompts with tests (code.py)
    gpqa   GPQA's CSV (Idavidrein/gpqa, gpqa_diamond) -> multiple-choice prompts, the choices in the
           official evaluation's order (gpqa.py)

Inputs are local files: JSONL, JSON (a list of records or {"data": [...]}), CSV with a header line
or Parquet (the format the Hugging Face hub serves; reading it needs the optional pyarrow). Nothing
is downloaded. Every malformed record raises DataError naming the input file, the record (JSONL: the
line; JSON, CSV and Parquet: "record i", counting from 0 like the dataset's row index) and the
field. The output is written only after the whole input converted, to a temporary file renamed
into place.

One module each: io.py reads the inputs and writes the outputs; public.py converts s1K-1.1 and
DAPO-Math-17k and merges trace files; code.py converts the code datasets; gpqa.py converts GPQA;
__main__.py is the command line below.

    python -m data.convert s1k s1K-1.1/data/train-00000-of-00001.parquet s1k.jsonl
    python -m data.convert merge s1k.jsonl gpt-oss-high.jsonl claude.jsonl s1k-4.jsonl
    python -m data.convert dapo DAPO-Math-17k/data/dapo-math-17k.parquet dapo.jsonl
    python -m data.convert code code_generation_lite/test6.jsonl lcb.jsonl
    python -m data.convert gpqa gpqa_diamond.csv gpqa_diamond.jsonl
    python -m pytest -q test_convert.py
"""

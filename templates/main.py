"""The flex template's entry file (FLEX_TEMPLATE_PYTHON_PY_FILE in templates/Dockerfile).

The template launcher runs `python main.py --name=value ...` with the template's parameters
(Sluice's options, see templates/metadata.json) and Beam's (--runner, --project, --region,
--temp_location, --sdk_container_image, ...). pipeline.options.parse_args reads both in the
--name=value form, so this file only hands argv to the same main() as `python -m pipeline`:
a template run and a command-line run cannot drift apart.
"""
import sys

from pipeline.main import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

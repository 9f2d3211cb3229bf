"""Ships the top-level registry.yaml inside the zoo_core package on a non-editable install."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithRegistry(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "zoo_core" / "registry.yaml"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(__file__).parent / "registry.yaml", target)


setup(cmdclass={"build_py": BuildPyWithRegistry})

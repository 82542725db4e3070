"""Packaging for culturellm, following nbdev 2's template: everything is read from settings.ini."""
import shlex
from configparser import ConfigParser

import setuptools

assert setuptools.__version__ >= "36.2"

config = ConfigParser(delimiters=["="])
config.read("settings.ini", encoding="utf-8")
cfg = config["DEFAULT"]

for key in "version description keywords author author_email".split():
    assert key in cfg, f"settings.ini: missing expected key {key!r}"

licenses = {"apache2": "Apache-2.0"}  # SPDX expression
statuses = ["1 - Planning", "2 - Pre-Alpha", "3 - Alpha", "4 - Beta", "5 - Production/Stable", "6 - Mature", "7 - Inactive"]
py_versions = "3.11 3.12 3.13".split()

requirements = shlex.split(cfg.get("requirements", ""))
dev_requirements = shlex.split(cfg.get("dev_requirements", ""))
bench_requirements = shlex.split(cfg.get("bench_requirements", ""))  # benchmarks/: the named baselines
ray_requirements = shlex.split(cfg.get("ray_requirements", ""))  # `culturellm run --executor ray`
min_python = cfg["min_python"]
lic = licenses[cfg["license"].lower()]

setuptools.setup(
    name=cfg["lib_name"],
    license=lic,
    classifiers=[
        "Development Status :: " + statuses[int(cfg["status"])],
        "Intended Audience :: " + cfg["audience"].title(),
        "Natural Language :: " + cfg["language"].title(),
    ] + ["Programming Language :: Python :: " + o for o in py_versions[py_versions.index(min_python):]],
    url=cfg["git_url"],
    # culturellm.data holds JSON only (no __init__.py): a namespace package, so that setuptools installs it as one
    packages=setuptools.find_namespace_packages(include=["culturellm", "culturellm.*"]),
    include_package_data=True,
    package_data={"culturellm.data": ["*.json"]},
    install_requires=requirements,
    extras_require={"dev": dev_requirements, "bench": bench_requirements, "ray": ray_requirements},
    dependency_links=cfg.get("dep_links", "").split(),
    python_requires=">=" + cfg["min_python"],
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    zip_safe=False,
    entry_points={
        "console_scripts": cfg.get("console_scripts", "").split(),
        "nbdev": [f'{cfg.get("lib_path")}={cfg.get("lib_path")}._modidx:d'],
    },
    version=cfg["version"],
    description=cfg["description"],
    keywords=cfg["keywords"],
    author=cfg["author"],
    author_email=cfg["author_email"],
)

from setuptools import find_packages, setup

setup(
    name="minnst",
    version="0.1.0",
    description="Neural style transfer from scratch on NumPy and CuPy (Gatys and Johnson et al.)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["minnst", "minnst.*"]),
    package_data={"minnst": ["kernels/*.cu", "kernels/*.h"]},
    # the project's trained style models (VGG16 itself is fetched, never shipped)
    data_files=[("share/minnst", ["weights/twelve_styles.h5", "weights/starry_night.h5"])],
    install_requires=[
        "numpy>=1.23.2",
        "scipy>=1.11.1",
        "pillow>=9.2",
        "h5py>=3.15",
        "tqdm>=4.60",
        "matplotlib>=3.6",
        "threadpoolctl>=3",
    ],
    extras_require={
        "gpu": ["cupy-cuda12x>=12"],
        "video": ["av>=14", "opencv-python-headless>=4.5"],
        "distributed": ["dask>=2024.1", "distributed>=2024.1", "bokeh>=3.1"],
        "test": ["pytest>=7", "hypothesis>=6.88", "av>=14", "opencv-python-headless>=4.5",
                 "dask>=2024.1", "distributed>=2024.1"],
    },
    entry_points={
        "console_scripts": [
            "minnst-gatys=minnst.gatys.cli:main",
            "minnst-train=minnst.train_fast:main",
            "minnst-stylize=minnst.stylize:main",
            "minnst-weights=minnst.weights.__main__:main",
            "minnst-bench=minnst.bench:main",
        ]
    },
)

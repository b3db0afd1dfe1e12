"""unirain: UniRain (CVPR 2026) as a BasicSR plugin."""
from setuptools import find_packages, setup

with open('README.md', encoding='utf-8') as f:
    long_description = f.read()

setup(
    name='unirain',
    version='0.1.0',
    description='UniRain: one model for daytime/nighttime rain streaks and raindrops, as a BasicSR plugin',
    long_description=long_description,
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.9',
    packages=find_packages(include=['unirain_arch*', 'unirain_losses*', 'unirain_data*', 'unirain_utils*']),
    include_package_data=True,
    install_requires=[
        'basicsr==1.4.2',
        'torch>=2.6',  # 2.6 made weights-only checkpoint loading the default (unirain also asks for it)
        'torchvision>=0.21',  # the torchvision of torch 2.6
        'numpy',
        'lmdb',
        'opencv-python',  # basicsr needs it; never add opencv-python-headless beside it (both own cv2/)
        'pyyaml',
        'scikit-image',
        'tensorboard',
        'tqdm',
        'matplotlib',
        'timm',
        'open_clip_torch',
        'transformers>=4.49',
        'qwen-vl-utils',
        'pillow',
    ],
    extras_require={
        # faiss-cpu and faiss-gpu both own the `faiss` module and pip cannot make one extra replace a base
        # requirement, so faiss is picked by extra: `.[cpu]` (the default of tools/install.sh) or `.[gpu]`.
        'cpu': ['faiss-cpu'],
        'gpu': ['faiss-gpu'],
        'metrics': ['lpips'],
        'test': ['pytest>=7'],
    },
    entry_points={
        'console_scripts': ['basicsr = unirain_utils.cli:main'],
        'basicsr.plugins': [
            'unirain_arch = unirain_arch',
            'unirain_losses = unirain_losses',
            'unirain_data = unirain_data',
            'unirain_metrics = unirain_utils.lpips_metric',
        ],
    },
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Image Processing',
    ],
)

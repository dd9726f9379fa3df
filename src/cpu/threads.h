/* threads.h: the OpenMP queries of the CPU ops, with their serial values in a build without OpenMP. */
#ifndef DDPM_CPU_THREADS_H
#define DDPM_CPU_THREADS_H

#ifdef _OPENMP
#include <omp.h>
#endif

static inline int cpu_max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static inline int cpu_thread_num(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static inline int cpu_in_parallel(void)
{
#ifdef _OPENMP
    return omp_in_parallel();
#else
    return 0;
#endif
}

#endif

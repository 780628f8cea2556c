#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static void nt_copy(char*d,const char*s,size_t n){for(size_t i=0;i<n;i+=64){__m128i a=_mm_loadu_si128((const __m128i*)(s+i)),b=_mm_loadu_si128((const __m128i*)(s+i+16)),c=_mm_loadu_si128((const __m128i*)(s+i+32)),e=_mm_loadu_si128((const __m128i*)(s+i+48));_mm_stream_si128((__m128i*)(d+i),a);_mm_stream_si128((__m128i*)(d+i+16),b);_mm_stream_si128((__m128i*)(d+i+32),c);_mm_stream_si128((__m128i*)(d+i+48),e);}_mm_sfence();}
int main(int c,char**v){size_t n=(size_t)atoi(v[1])<<20;char*s=aligned_alloc(64,n),*d=aligned_alloc(64,n);memset(s,1,n);memset(d,2,n);
for(int k=0;k<3;k++){double t=now();for(int r=0;r<10;r++)memcpy(d,s,n);double a=now()-t;t=now();for(int r=0;r<10;r++)nt_copy(d,s,n);double b=now()-t;
printf("%zu MiB memcpy %.2f GB/s  nt %.2f GB/s\n",n>>20,10*n/a/1e9,10*n/b/1e9);}}

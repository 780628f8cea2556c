//! The two device sides a group can hold, behind one type-erased trait: [`DeviceSide`] (one
//! backend communicator per epoch, NCCL or the fake) and [`StagedSide`] (device buffers staged
//! through host memory and reduced by the epoch's host communicator).

use std::{any::Any, time::Duration};

use ringrun_collectives::{
    CollectiveError, Ctl,
    device::{DeviceComm, DeviceCommunicator, DeviceFault, Stager, Staging, WatchConfig},
    exec::Executor,
};

use super::{DeviceBackend, StagingBackend, UniqueIdBytes};

/// The group's view of its device side, with the backend's types erased.
pub(crate) trait DeviceEpochs: Send {
    /// See [`DeviceBackend::describe`].
    fn describe(&self) -> String;
    /// Forgets the current epoch's communicator without waiting (dropping an NCCL
    /// communicator that was not finalised aborts it off this thread).
    fn drop_epoch(&mut self);
    /// See [`DeviceBackend::unique_id`].
    fn unique_id(&mut self) -> Result<UniqueIdBytes, DeviceFault>;
    /// Creates this rank's communicator for `epoch` and waits until it is ready, under `ctl`.
    fn install(
        &mut self,
        rt: &Executor,
        ctl: &Ctl,
        id: &UniqueIdBytes,
        rank: usize,
        size: usize,
        epoch: u64,
    ) -> Result<(), CollectiveError>;
    /// For the typed calls.
    fn as_any(&mut self) -> &mut dyn Any;
}

/// The device side over a backend whose communicator is `C`.
pub(crate) struct DeviceSide<C: DeviceComm> {
    backend: Box<dyn DeviceBackend<Comm = C>>,
    comm: Option<DeviceCommunicator<C>>,
    watch: WatchConfig,
}

impl<C: DeviceComm + Send + 'static> DeviceSide<C> {
    pub(crate) fn new(backend: Box<dyn DeviceBackend<Comm = C>>) -> Self {
        DeviceSide {
            backend,
            comm: None,
            watch: WatchConfig::default(),
        }
    }

    /// The epoch's communicator and the stream to use (the caller's, else the backend's).
    pub(crate) fn parts<'a>(
        &'a mut self,
        stream: Option<&'a C::Stream>,
    ) -> Result<(&'a mut DeviceCommunicator<C>, &'a C::Stream), CollectiveError> {
        let comm = self.comm.as_mut().ok_or_else(|| CollectiveError::Aborted {
            reason: "no device communicator for this epoch".into(),
        })?;
        Ok((comm, stream.unwrap_or_else(|| self.backend.stream())))
    }

    pub(crate) fn stream(&self) -> &C::Stream {
        self.backend.stream()
    }
}

impl<C: DeviceComm + Send + 'static> DeviceEpochs for DeviceSide<C> {
    fn describe(&self) -> String {
        self.backend.describe()
    }

    fn drop_epoch(&mut self) {
        self.comm = None;
    }

    fn unique_id(&mut self) -> Result<UniqueIdBytes, DeviceFault> {
        self.backend.unique_id()
    }

    fn install(
        &mut self,
        rt: &Executor,
        ctl: &Ctl,
        id: &UniqueIdBytes,
        rank: usize,
        size: usize,
        epoch: u64,
    ) -> Result<(), CollectiveError> {
        self.comm = None;
        let raw = self
            .backend
            .create(id, rank, size, epoch)
            .map_err(|f| f.to_error(Duration::ZERO))?;
        let comm = self
            .comm
            .insert(DeviceCommunicator::new(raw, epoch, self.watch));
        rt.block_on(comm.ready(ctl))
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

/// The device side without a device communicator: each call copies the buffers to a pinned
/// host area and runs the epoch's host collective on it. There is nothing per epoch to build,
/// since the host communicator is the epoch's own; a staging area whose copy failed may still be
/// written by the device, so it is leaked and replaced at the next epoch.
pub(crate) struct StagedSide<S: Staging> {
    backend: Box<dyn StagingBackend<Staging = S>>,
    stager: Option<Stager<S>>,
}

impl<S: Staging + Send + 'static> StagedSide<S> {
    pub(crate) fn new(backend: Box<dyn StagingBackend<Staging = S>>) -> Self {
        StagedSide {
            backend,
            stager: None,
        }
    }

    /// The stager and the stream to use (the caller's, else the backend's).
    pub(crate) fn parts<'a>(
        &'a mut self,
        stream: Option<&'a S::Stream>,
    ) -> Result<(&'a mut Stager<S>, &'a S::Stream), CollectiveError> {
        let stager = self
            .stager
            .as_mut()
            .ok_or_else(|| CollectiveError::Aborted {
                reason: "no staging area for this epoch".into(),
            })?;
        Ok((stager, stream.unwrap_or_else(|| self.backend.stream())))
    }

    pub(crate) fn stream(&self) -> &S::Stream {
        self.backend.stream()
    }
}

impl<S: Staging + Send + 'static> DeviceEpochs for StagedSide<S> {
    fn describe(&self) -> String {
        self.backend.describe()
    }

    fn drop_epoch(&mut self) {
        if self.stager.as_ref().is_some_and(|s| s.poisoned().is_some()) {
            std::mem::forget(self.stager.take());
        }
    }

    fn unique_id(&mut self) -> Result<UniqueIdBytes, DeviceFault> {
        Ok([0; super::UNIQUE_ID_LEN])
    }

    fn install(
        &mut self,
        _rt: &Executor,
        _ctl: &Ctl,
        _id: &UniqueIdBytes,
        _rank: usize,
        _size: usize,
        _epoch: u64,
    ) -> Result<(), CollectiveError> {
        self.drop_epoch();
        if self.stager.is_none() {
            let staging = self
                .backend
                .staging()
                .map_err(|f| f.to_error(Duration::ZERO))?;
            self.stager = Some(Stager::new(staging));
        }
        Ok(())
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}
